"""MGD for Detectron2 as an external project (in the manner of detectron2's projects/PointRend).

Importing this package registers the pre-ReLU ResNet-FPN backbone in BACKBONE_REGISTRY and the
MGDRetinaNet meta-architecture in META_ARCH_REGISTRY; nothing inside detectron2 is modified.
"""
from .backbone import build_retinanet_resnet_prerelu_fpn_backbone, resnet_stage_specs
from .config import add_mgd_config, teacher_config
from .hooks import MGDUpdateHook
from .meta_arch import MGDRetinaNet

__all__ = ["add_mgd_config", "teacher_config", "build_retinanet_resnet_prerelu_fpn_backbone", "resnet_stage_specs",
           "MGDRetinaNet", "MGDUpdateHook"]
