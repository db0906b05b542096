"""Initialisation shared by the models written here."""
from torch import nn


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal convolutions (fan-out, as torchvision's ResNets), unit BN scale, zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
