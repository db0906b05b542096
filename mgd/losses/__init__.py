"""Output- and feature-level distillation losses, one paper per module (MGD's own loss is in mgd.margin)."""
from .at import attention_map, at_loss
from .kd import kd_loss
from .nd import nd_loss
from .sp import sp_loss

__all__ = ["kd_loss", "at_loss", "attention_map", "sp_loss", "nd_loss"]
