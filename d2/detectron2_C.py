"""Pure-Python stand-in for ``detectron2._C``, the compiled extension of detectron2.

Installed as ``detectron2/_C.py`` by ``d2/install_detectron2.py``, which installs detectron2 0.6 from
its PyPI source distribution without compiling anything. Detectron2 imports this module at start-up for
version information and a few custom operators. The version helpers answer; every operator raises a
NotImplementedError that says what is missing. RetinaNet, Faster R-CNN and Mask R-CNN train and infer
without them (their box ops and RoIAlign come from torchvision).
"""

__version__ = "0.6+pure-python"

_HINT = ("this detectron2 was installed without its compiled operators (mgd's d2/install_detectron2.py); "
         "install a compiled detectron2 build to use {feature}")


def get_compiler_version() -> str:
    return "none (pure-Python stand-in for detectron2._C)"


def get_cuda_version() -> str:
    return "none"


def has_cuda() -> bool:
    return False


def _unavailable(name: str, feature: str):
    def op(*args, **kwargs):
        raise NotImplementedError(f"detectron2._C.{name} is unavailable: " + _HINT.format(feature=feature))
    op.__name__ = name
    return op


box_iou_rotated = _unavailable("box_iou_rotated", "rotated boxes")
nms_rotated = _unavailable("nms_rotated", "rotated boxes")
roi_align_rotated_forward = _unavailable("roi_align_rotated_forward", "rotated RoIAlign")
roi_align_rotated_backward = _unavailable("roi_align_rotated_backward", "rotated RoIAlign")
deform_conv_forward = _unavailable("deform_conv_forward", "deformable convolution")
deform_conv_backward_input = _unavailable("deform_conv_backward_input", "deformable convolution")
deform_conv_backward_filter = _unavailable("deform_conv_backward_filter", "deformable convolution")
modulated_deform_conv_forward = _unavailable("modulated_deform_conv_forward", "deformable convolution")
modulated_deform_conv_backward = _unavailable("modulated_deform_conv_backward", "deformable convolution")
COCOevalAccumulate = _unavailable("COCOevalAccumulate", "the fast COCO evaluation (use_fast_impl=False works)")
COCOevalEvaluateImages = _unavailable("COCOevalEvaluateImages",
                                      "the fast COCO evaluation (use_fast_impl=False works)")
InstanceAnnotation = _unavailable("InstanceAnnotation", "the fast COCO evaluation (use_fast_impl=False works)")
ImageEvaluation = _unavailable("ImageEvaluation", "the fast COCO evaluation (use_fast_impl=False works)")
