"""The penultimate embedding: the input of a classifier's final linear layer (KD++'s ND term, CRD, ReviewKD)."""
from __future__ import annotations

from typing import Optional

from torch import nn

from .spec import StageSpec, unwrap

__all__ = ["classifier_layer", "embedding_layer", "embedding_spec"]


def classifier_layer(net: nn.Module) -> str:
    """Name of the final ``nn.Linear`` of a classifier (``fc``, ``classifier.1``, ``head.fc``, a ViT's
    ``heads.head``...): the layer whose input is the penultimate embedding."""
    linears = [name for name, m in unwrap(net).named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(unwrap(net)).__name__} has no nn.Linear classifier; name the embedding layer")
    return linears[-1]


def embedding_layer(net: nn.Module, name: Optional[str] = None) -> nn.Linear:
    """The final linear layer called ``name`` (default: :func:`classifier_layer`)."""
    name = name or classifier_layer(net)
    layer = unwrap(net).get_submodule(name)
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"the embedding layer {name!r} must be the final nn.Linear, got {type(layer).__name__}")
    return layer


def embedding_spec(net: nn.Module, name: Optional[str] = None) -> StageSpec:
    """Where the embedding is captured: the input of the final linear layer."""
    return StageSpec(name or classifier_layer(net), capture="input")
