"""The autocast check the feature methods' tests share: a distiller's term from half-precision network outputs
against the float32 computation on the same values."""
import torch


def term_under_autocast(d, x, dtype, monkeypatch, term):
    """(term under CPU autocast from ``dtype`` outputs, the same term from float32 copies of those outputs)."""
    with torch.no_grad():
        t_feats, t_out, s_feats, s_out = d.run_networks(x)
    half = ([f.to(dtype) for f in t_feats], t_out.to(dtype), [f.to(dtype) for f in s_feats], s_out.to(dtype))
    exact = ([f.float() for f in half[0]], half[1].float(), [f.float() for f in half[2]], half[3].float())
    monkeypatch.setattr(d, "run_networks", lambda images: exact)
    reference = d.forward_train(x)[1][term]
    monkeypatch.setattr(d, "run_networks", lambda images: half)
    with torch.autocast("cpu", dtype=dtype):
        value = d.forward_train(x)[1][term]
    return value, reference
