"""Output- and feature-level distillation losses, one paper per module (MGD's and OFD's partial L2 and margins: :mod:`mgd.losses.ofd`)."""
from .at import attention_map, at_loss
from .crd import nce_loss
from .cwd import channel_distribution, cwd_loss
from .deit import deit_distillation_loss
from .dist import dist_loss
from .dkd import dkd_loss
from .fitnet import fitnet_loss
from .hcl import hcl_loss
from .kd import kd_loss
from .logit_standardization import standardize_logits
from .masked_generative import masked_generative_loss, random_mask
from .nd import nd_loss
from .sp import sp_loss

__all__ = ["kd_loss", "at_loss", "attention_map", "sp_loss", "nd_loss", "dkd_loss", "dist_loss", "hcl_loss",
           "nce_loss", "fitnet_loss", "cwd_loss", "channel_distribution", "standardize_logits",
           "masked_generative_loss", "random_mask", "deit_distillation_loss"]
