"""Change-detection models behind one interface: ``model(image_a, image_b, labels=None)``."""

from maskcd.models.base import ChangeDetectionOutput, ChangeModelMixin, InferenceSpec, inference_spec
from maskcd.models.registry import (
    ModelNotFoundError,
    build_model,
    count_parameters,
    list_models,
    load_model,
    register_architecture,
    register_legacy_loader,
)

__all__ = [
    "ChangeDetectionOutput",
    "ChangeModelMixin",
    "InferenceSpec",
    "ModelNotFoundError",
    "build_model",
    "count_parameters",
    "inference_spec",
    "list_models",
    "load_model",
    "register_architecture",
    "register_legacy_loader",
]
