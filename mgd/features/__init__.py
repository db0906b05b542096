"""How features reach a distiller: stage positions (:mod:`.spec`), the original protocol and forward hooks
(:mod:`.capture`), the built-in torchvision tables (:mod:`.builtin`), discovery in timm / torchvision models
(:mod:`.discovery`) and the penultimate embedding (:mod:`.embedding`)."""
from .builtin import builtin_ignore_inds, builtin_stages, residual_stages
from .capture import HookFeatures, ProtocolFeatures, make_feature_source
from .embedding import classifier_layer, embedding_layer, embedding_spec
from .spec import StageSpec, implements_protocol, unwrap

__all__ = ["StageSpec", "ProtocolFeatures", "HookFeatures", "builtin_stages", "builtin_ignore_inds", "residual_stages",
           "implements_protocol", "make_feature_source", "unwrap", "classifier_layer", "embedding_layer",
           "embedding_spec"]
