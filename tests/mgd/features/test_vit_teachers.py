"""A ViT or Swin teacher with a ResNet student (the KD++ paper's ViT -> ResNet table): the logit methods and
their "++" run, the ND embedding is the input of the transformer's classification head; the feature
methods say clearly that the pair has no stage features and what to use instead."""
import pytest
import torch
import torchvision

import mgd


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    return torchvision.models.vit_b_16(num_classes=10, image_size=32), torchvision.models.resnet18(num_classes=10)


@pytest.mark.parametrize("name,options", [("kd", {}), ("nd", {}), ("dkd", {"nd_weight": 1.0}),
                                          ("dist", {"nd_weight": 1.0})])
def test_logit_methods_and_their_plus_plus_take_a_vit_teacher(pair, name, options):
    teacher, student = pair
    x, y = torch.randn(10, 3, 32, 32), torch.arange(10)
    d = mgd.build_distiller(name, teacher, student, **options)
    try:
        if d.prepare_due(0):
            d.prepare([(x, y)])
            assert d.class_means.shape == (10, 768)  # ViT-B's embedding: the input of heads.head
            with torch.no_grad():
                teacher.eval()
                patches = teacher._process_input(x)  # torchvision's forward, up to the head's input
                tokens = teacher.encoder(torch.cat([teacher.class_token.expand(10, -1, -1), patches], dim=1))
            torch.testing.assert_close(d.class_means, tokens[:, 0], rtol=1e-4, atol=1e-4)
        d.set_epoch(30)
        d.train()
        logits, terms = d.forward_train(x, y)
        sum(terms.values()).backward()
        assert logits.shape == (10, 10) and all(torch.isfinite(v) and v > 0 for v in terms.values())
        assert all(p.grad is None for p in teacher.parameters())
    finally:
        d.close()
        student.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", ["mgd", "ofd", "reviewkd", "at"])
def test_feature_methods_name_the_way_out(pair, name):
    with pytest.raises(ValueError, match=r"VisionTransformer.*distil through the logits and embeddings only"):
        mgd.build_distiller(name, *pair)
    swin = torchvision.models.swin_t(num_classes=10)
    with pytest.raises(ValueError, match=r"SwinTransformer: no stage positions.*kd, nd, dkd, dist"):
        mgd.build_distiller(name, swin, pair[1])
