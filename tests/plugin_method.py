"""A distillation method that mgd does not know: the student's logits regressed on the teacher's (mean squared
error). Registered by the tests that use it, directly or through an installed package's entry point."""
import torch.nn.functional as F

import mgd


class LogitMSE(mgd.Distiller):
    """weight * MSE(student logits, teacher logits).

    Args:
        weight: weight of the mean squared error of the logits.
    """

    needs_features = False
    cli_options = ("weight",)  # --logit-mse-weight in every script that offers the method

    def __init__(self, t_net, s_net, weight: float = 1.0, **kwargs):
        super().__init__(t_net, s_net, **kwargs)
        self.weight = float(weight)

    def losses(self, s_feats, t_feats, s_out, t_out, target):
        return {"logit_mse": self.weight * F.mse_loss(s_out.float(), t_out.float())}


def write_package(root, name="logit_mse"):
    """A throw-away installed distribution in ``root`` (put it on the path): its metadata and one entry point of the
    group mgd.distillers naming :class:`LogitMSE` by a copy of this module, ``mgd_test_plugin``."""
    import shutil
    info = root / "mgd_test_plugin-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mgd-test-plugin\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(f"[mgd.distillers]\n{name} = mgd_test_plugin:LogitMSE\n")
    shutil.copy(__file__, root / "mgd_test_plugin.py")
    return root


class StageL2(mgd.Distiller):
    """weight * the mean squared difference of the student's and the teacher's pre-ReLU stage features (a dense
    method: it works on any (N, C, H, W) features, so seg/train.py offers it; pairs of equal widths only).

    Args:
        weight: weight of the summed stage MSEs.
    """

    dense_outputs = True
    cli_options = ("weight",)

    def __init__(self, t_net, s_net, weight: float = 1.0, **kwargs):
        super().__init__(t_net, s_net, **kwargs)
        self.weight = float(weight)

    def losses(self, s_feats, t_feats, s_out, t_out, target):
        return {"stage_l2": self.weight * sum(F.mse_loss(s.float(), t.float()) for s, t in zip(s_feats, t_feats))}
