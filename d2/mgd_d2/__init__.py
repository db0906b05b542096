"""MGD for Detectron2 as an external project (in the manner of detectron2's projects/PointRend).

Importing this package registers the pre-ReLU ResNet-FPN and the MobileNetV2-FPN backbones in
BACKBONE_REGISTRY and the DistillRetinaNet (alias MGDRetinaNet) and DistillGeneralizedRCNN meta-architectures in
META_ARCH_REGISTRY; nothing inside detectron2 is modified.
"""
from .backbone import (build_resnet_prerelu_fpn_backbone, build_retinanet_resnet_prerelu_fpn_backbone,
                       resnet_stage_specs, stage_specs)
from .config import add_mgd_config, feature_methods, logit_methods, teacher_config
from .datasets import register_coco_datasets
from .hooks import MGDUpdateHook
from .launch import cpu_ddp, launch
from .mobilenet import (MobileNetV2Backbone, build_mobilenet_v2_fpn_backbone,
                        build_retinanet_mobilenet_v2_fpn_backbone)
from .meta_arch import DistillDetector, DistillGeneralizedRCNN, DistillRetinaNet, MGDRetinaNet
from .stage_norm import enable_stage_last_norm

__all__ = ["add_mgd_config", "teacher_config", "feature_methods", "logit_methods",
           "build_retinanet_resnet_prerelu_fpn_backbone", "build_resnet_prerelu_fpn_backbone", "resnet_stage_specs",
           "stage_specs", "MobileNetV2Backbone", "build_retinanet_mobilenet_v2_fpn_backbone",
           "build_mobilenet_v2_fpn_backbone",
           "enable_stage_last_norm", "DistillDetector", "DistillRetinaNet", "MGDRetinaNet", "DistillGeneralizedRCNN",
           "MGDUpdateHook", "register_coco_datasets", "launch", "cpu_ddp"]
