"""One stage position: the module whose output (or input) is the stage feature, and its margin's BN."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from torch import nn

__all__ = ["StageSpec", "unwrap", "implements_protocol"]


@dataclass(frozen=True)
class StageSpec:
    """One distillation position.

    module:   dotted name (as in ``model.named_modules()``) of the module whose output (or input) is the
              pre-ReLU stage feature.
    capture:  "output" (default) or "input": the input of the module's last call in a forward, e.g. the
              tensor an (in-place) ReLU receives.
    bn:       name of the BatchNorm that produces the pre-ReLU values (teacher side: the margins).
    channels: the feature's channel count, when it cannot be read off the named modules.
    margin:   False for a stage with no BatchNorm + ReLU on the teacher side (a linear output): no margin,
              the target is the teacher's feature itself (:data:`mgd.losses.ofd.NO_MARGIN`).
    """
    module: str
    capture: str = "output"
    bn: Optional[str] = None
    channels: Optional[int] = None
    margin: bool = True

    def __post_init__(self) -> None:
        if self.capture not in ("output", "input"):
            raise ValueError(f"StageSpec.capture must be 'output' or 'input', got {self.capture!r}")


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DataParallel / DistributedDataParallel wrappers."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def implements_protocol(model: nn.Module) -> bool:
    """True for models written for the original MGD code."""
    m = unwrap(model)
    return all(callable(getattr(m, name, None)) for name in ("extract_feature", "get_bn_before_relu",
                                                            "get_channel_num"))


# ----------------------------------------------------------------------------------------------------------
# Built-in stage positions for torchvision families (same positions as the original's rewritten models).
