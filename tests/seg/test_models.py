"""Every seg/ model: logits at the input size, and its distillation positions are pre-activation features
with the channels and strides the tables claim; pairing errors name the positions to drop."""
import pytest
import torch
from torch import nn

from mgd.features import HookFeatures
from seg.models import MODEL_NAMES, build_model, dilate_
from seg.positions import OFD_DIVISORS, located_positions, pair_positions, resolve_positions, stage_weights
from tiny_models import randomize_bn

#: strides of each model's positions (stage1..4, then its head positions)
STRIDES = {
    "deeplabv3plus": [4, 8, 16, 16, 16, 4],  # output stride 16; the decoder at stride 4
    "deeplabv3_resnet": [4, 8, 8, 8, 8, 8],  # torchvision's output stride 8
    "fcn_resnet": [4, 8, 8, 8, 8],
    "deeplabv3_mobilenet": [4, 8, 16, 16, 16, 16],
    "lraspp": [4, 8, 16, 16, 16],
}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_positions_are_pre_activation_and_match_the_tables(name):
    torch.manual_seed(0)
    model = randomize_bn(build_model(name, 5)).eval()
    x = torch.randn(2, 3, 64, 64)
    located = located_positions(model)
    assert list(located)[:4] == ["stage1", "stage2", "stage3", "stage4"]
    assert set(located) - {"stage1", "stage2", "stage3", "stage4"} <= {"aspp", "decoder"}
    strides = next(v for k, v in STRIDES.items() if name.startswith(k))
    assert [r for _, r in located.values()] == strides
    source = HookFeatures(model, [spec for spec, _ in located.values()])
    try:
        with torch.no_grad():
            feats, out = source(model, x)
    finally:
        source.close()
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5, 64, 64)  # the "out" dict unwrapped, input size
    for (pos, (spec, stride)), f in zip(located.items(), feats):
        assert f.shape[1] == spec.channels and f.shape[-1] == 64 // stride, pos
        assert (f < 0).any(), f"{name} {pos}: no negative value, not before the activation"
        if spec.bn is not None:  # the margin BN feeds exactly this tensor (captured before the ReLU)
            assert spec.margin and model.get_submodule(spec.bn).num_features == spec.channels
    # the model is left as it was: no hook remains, in-place flags restored
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules() if m is not model)


def test_resnet_deeplab_positions_are_the_ofd_ones():
    model = build_model("deeplabv3plus_resnet101", 3)
    located = located_positions(model)
    assert [s.channels for s, _ in located.values()] == [256, 512, 1024, 2048, 256, 256]
    stage4 = located["stage4"][0]
    assert stage4.module == "backbone.layer4.2.relu" and stage4.bn == "backbone.layer4.2.bn3"
    assert located["aspp"][0].bn == "aspp.project.1" and located["decoder"][0].bn == "decoder.fuse.5"
    assert stage_weights(list(located)) == [1 / 8, 1 / 4, 1 / 2, 1, 1, 1 / 16]
    assert OFD_DIVISORS["decoder"] == 16


def test_dilate_halves_the_output_stride_and_keeps_weights():
    layer = nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Conv2d(4, 4, 1, stride=2))
    weights = [p.clone() for p in layer.parameters()]
    dilate_(layer)
    assert layer(torch.randn(1, 4, 8, 8)).shape[-1] == 8
    assert layer[0].dilation == (2, 2) and layer[0].padding == (2, 2) and layer[1].dilation == (1, 1)
    assert all(torch.equal(a, b) for a, b in zip(weights, layer.parameters()))


def test_pairing_names_the_positions_to_drop():
    r18, mnv2 = build_model("deeplabv3plus_resnet18", 3), build_model("deeplabv3plus_mobilenet_v2", 3)
    with pytest.raises(ValueError) as err:
        pair_positions(r18, mnv2, "all", wider_teacher=True)
    text = str(err.value)
    assert "stage1 (teacher 64 channels < student 144)" in text and "stage3" in text and "stage4 (" not in text
    assert "--distill-positions stage4,aspp,decoder" in text
    names, t, s = pair_positions(r18, mnv2, "stage4,aspp,decoder", wider_teacher=True)
    assert names == ["stage4", "aspp", "decoder"] and [x.channels for x in s] == [320, 256, 256]
    names, _, _ = pair_positions(r18, mnv2, "all", wider_teacher=False)  # OFD's connectors take any width
    assert len(names) == 6
    fcn = build_model("fcn_resnet50", 3)  # output stride 8 against 16, and no ASPP position
    with pytest.raises(ValueError, match=r"stage3 \(teacher stride 8, student 16\)"):
        pair_positions(fcn, r18, "all", wider_teacher=True)
    names, _, _ = pair_positions(fcn, r18, "stage1,stage2", wider_teacher=True)
    assert names == ["stage1", "stage2"]
    with pytest.raises(ValueError, match="not in both models"):
        pair_positions(fcn, r18, "aspp", wider_teacher=False)
    with pytest.raises(ValueError, match="unknown position"):
        resolve_positions("stage9")
