"""The contract every maskcd change-detection model follows.

Every model is a :class:`transformers.PreTrainedModel` called as ``model(image_a, image_b, labels=None)``:

* ``image_a``, ``image_b``: ``(B, C, H, W)`` float tensors, already normalised with the model's :class:`InferenceSpec`
  (``image_a`` is the earlier date, "before"; ``image_b`` the later one, "after").
* ``labels``: optional ``(B, H, W)`` int64 with 0 = unchanged, 1 = changed and 255 = ignored.

It returns a :class:`ChangeDetectionOutput` (or a subclass with model-specific fields) whose ``change_prob`` is
``(B, H, W)`` in [0, 1] and whose ``loss`` is set when labels are given.

What inference needs (bands, value scale, normalisation, native tile size, ground sample distance: an
:class:`~maskcd.contract.InferenceSpec`, defined with the raster contract in :mod:`maskcd.contract`) is stored in the
model config, so that ``save_pretrained`` records it next to the weights and ``maskcd-map`` can read it back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from maskcd.contract import IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, InferenceSpec
from maskcd.errors import ConfigError

__all__ = [
    "IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD", "INFERENCE_KEYS", "ChangeDetectionOutput", "ChangeModelMixin",
    "InferenceSpec", "check_labels", "inference_spec", "pop_inference_spec", "set_inference_spec",
]


@dataclass
class ChangeDetectionOutput(ModelOutput):
    """Output of every maskcd change-detection model.

    Args:
        loss: Scalar training loss, only when ``labels`` were given.
        change_prob: ``(B, H, W)`` probability of change in [0, 1] at the input resolution.
        logits: ``(B, 2, H, W)`` class logits for models that produce dense logits (``None`` otherwise).
    """

    loss: torch.FloatTensor | None = None
    change_prob: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


INFERENCE_KEYS = ("input_bands", "value_scale", "image_mean", "image_std", "tile_size", "gsd")


def _spec_from(values: dict) -> InferenceSpec:
    """An :class:`InferenceSpec` from stored values (lists become tuples; missing or ``None`` keys keep defaults)."""
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if v is not None}
    return InferenceSpec(**{**InferenceSpec().to_dict(), **given})


def inference_spec(config) -> InferenceSpec:
    """Read the :class:`InferenceSpec` stored in a model config (defaults for what is missing, e.g. legacy configs)."""
    return _spec_from({key: getattr(config, key, None) for key in INFERENCE_KEYS})


def pop_inference_spec(kwargs: dict, valid_keys, family: str) -> InferenceSpec:
    """Check a preset's config keys and take the :class:`InferenceSpec` fields out of ``kwargs`` (in place).

    Raises:
        ConfigError: for a key that is neither in ``valid_keys`` nor an inference-spec field, listing the valid ones.
    """
    valid = set(valid_keys) | set(INFERENCE_KEYS)
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise ConfigError(f"unknown {family} config keys {unknown}; valid keys: {sorted(valid)}")
    return _spec_from({k: kwargs.pop(k) for k in INFERENCE_KEYS if k in kwargs})


def set_inference_spec(config, spec: InferenceSpec | None = None, **overrides) -> None:
    """Store an :class:`InferenceSpec` (plus overrides) on a config so that ``save_pretrained`` records it."""
    spec = spec or inference_spec(config)
    for key, value in {**spec.to_dict(), **overrides}.items():
        setattr(config, key, list(value) if isinstance(value, tuple) else value)


class ChangeModelMixin:
    """Mixin for maskcd models: the inference spec and a default ``change_prob`` from 2-class logits."""

    maskcd_architecture: str = ""

    @property
    def inference_spec(self) -> InferenceSpec:
        return inference_spec(self.config)

    @staticmethod
    def prob_from_logits(logits: torch.Tensor) -> torch.Tensor:
        """``(B, 2, H, W)`` logits → ``(B, H, W)`` change probability (softmax channel 1)."""
        return logits.float().softmax(dim=1)[:, 1]


def check_labels(labels: torch.Tensor | None) -> torch.Tensor | None:
    """Validate a ``(B, H, W)`` label tensor (0, 1, 255) and return it as int64."""
    if labels is None:
        return None
    if labels.dim() == 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dim() != 3:
        raise ValueError(f"labels must be (B, H, W) with 0/1/255 values, got shape {tuple(labels.shape)}")
    return labels.long()
