"""Shared plumbing of the zoo models: the call contract, padding to the network's stride, losses and config building.

Every zoo model subclasses :class:`ZooModel` and implements ``predict(image_a, image_b)`` (returning a
:class:`ZooPrediction`) and ``compute_loss(prediction, labels)``. :meth:`ZooModel.forward` does the rest:

* inputs whose height/width is not a multiple of the network's total stride (``size_divisor``) are padded at the
  bottom/right by edge replication, labels by 255 (ignored); outputs are cropped back, so ``change_prob`` always has
  the input's ``H × W``;
* sigmoid (single-logit) models report ``logits`` as the two-class pair ``(0, z)`` whose softmax channel 1 equals
  ``sigmoid(z)``, so every model returns ``logits (B, 2, H, W)`` and ``change_prob = softmax(logits)[:, 1]``.

Weights are initialised with each layer's own PyTorch default (``reset_parameters``), as the published PyTorch code
does; ImageNet-pretrained backbones cannot be downloaded here and are built with random weights.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel

from maskcd.contract import IGNORE_INDEX
from maskcd.models.base import (
    ChangeDetectionOutput,
    ChangeModelMixin,
    check_labels,
    pop_inference_spec,
    set_inference_spec,
)


@dataclass
class ZooPrediction:
    """Raw network outputs in the padded frame.

    Args:
        logits: Main output at the (padded) input size: ``(B, 2, H, W)`` class logits, or ``(B, 1, H, W)`` change
            logits for sigmoid models.
        aux: Deep-supervision outputs (any resolution), used only by ``compute_loss``.
    """

    logits: torch.Tensor
    aux: list[torch.Tensor] = field(default_factory=list)


class ZooModel(ChangeModelMixin, PreTrainedModel):
    """Base class of the zoo models (``model(image_a, image_b, labels=None)`` → :class:`ChangeDetectionOutput`)."""

    main_input_name = "image_a"
    base_model_prefix = "net"
    input_modalities = ("image",)
    size_divisor: int = 1

    @property
    def num_bands(self) -> int:
        return len(self.config.input_bands)

    def _init_weights(self, module: nn.Module) -> None:
        # PyTorch defaults of every layer (the published code's init); torch.nn.init calls are guarded by
        # transformers so that loaded weights are not overwritten.
        if module is not self and hasattr(module, "reset_parameters"):
            module.reset_parameters()
        self._init_extra(module)

    def _init_extra(self, module: nn.Module) -> None:
        """Initialise raw ``nn.Parameter``s a model owns directly (none by default)."""

    def frozen_modules(self) -> list[nn.Module]:
        """Sub-modules kept only for the published layout/size and never called: not trained."""
        return []

    def freeze_unused(self) -> None:
        for module in self.frozen_modules():
            module.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # transformers materialises loaded weights as new Parameters (requires_grad=True): re-freeze afterwards
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded).freeze_unused()
        return loaded

    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor) -> ZooPrediction:
        raise NotImplementedError

    def compute_loss(self, prediction: ZooPrediction, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, image_a: torch.Tensor, image_b: torch.Tensor, labels: torch.Tensor | None = None, **kwargs
    ) -> ChangeDetectionOutput:
        if image_a.shape != image_b.shape:
            raise ValueError(f"image_a {tuple(image_a.shape)} and image_b {tuple(image_b.shape)} differ in shape")
        if image_a.shape[1] != self.num_bands:
            raise ValueError(f"expected {self.num_bands} input bands, got {image_a.shape[1]}")
        labels = check_labels(labels)
        h, w = image_a.shape[-2:]
        d = self.size_divisor
        ph, pw = (-h) % d, (-w) % d
        if ph or pw:
            image_a = F.pad(image_a, (0, pw, 0, ph), mode="replicate")
            image_b = F.pad(image_b, (0, pw, 0, ph), mode="replicate")
        pred = self.predict(image_a, image_b)
        loss = None
        if labels is not None:
            if labels.shape[-2:] != (h, w):
                raise ValueError(f"labels {tuple(labels.shape)} do not match the images' {h}x{w}")
            padded = F.pad(labels, (0, pw, 0, ph), value=IGNORE_INDEX) if (ph or pw) else labels
            loss = self.compute_loss(pred, padded)
        logits = pred.logits[..., :h, :w]
        if logits.shape[1] == 1:
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        return ChangeDetectionOutput(loss=loss, change_prob=self.prob_from_logits(logits), logits=logits)


# --------------------------------------------------------------------------- losses (255 ignored everywhere)


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of ``(B, H, W)`` labels (ChangeFormer's multi-scale targets)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over 2-class logits, 255 ignored; 0 (with a graph) when every pixel is ignored."""
    valid = labels != IGNORE_INDEX
    if not valid.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)


def bce_loss(logit: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on single change logits ``(B, 1, H, W)`` (sigmoid + BCE, in the stable form)."""
    valid = labels != IGNORE_INDEX
    if not valid.any():
        return logit.sum() * 0.0
    z = logit[:, 0][valid]
    return F.binary_cross_entropy_with_logits(z, labels[valid].float())


def dice_loss(logits: torch.Tensor, labels: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Multi-class soft dice (softmax probabilities vs one-hot labels, mean over classes), 255 ignored."""
    valid = (labels != IGNORE_INDEX).unsqueeze(1).float()
    probs = logits.softmax(dim=1) * valid
    onehot = F.one_hot(labels.clamp(max=logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2).float() * valid
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    card = (probs + onehot).sum(dim=(0, 2, 3))
    return 1.0 - ((2.0 * inter + eps) / (card + eps)).mean()


# --------------------------------------------------------------------------- config building


def config_builder(config_cls: type[PreTrainedConfig]):
    """A preset builder for ``config_cls``: its ``__init__`` keywords plus the :class:`InferenceSpec` fields."""
    params = [p for p in inspect.signature(config_cls.__init__).parameters if p not in ("self", "kwargs")]

    def build(**kwargs) -> PreTrainedConfig:
        spec = pop_inference_spec(kwargs, params, config_cls.model_type)
        config = config_cls(**kwargs)
        set_inference_spec(config, spec)
        return config

    build.__doc__ = f"Build a {config_cls.__name__} from a preset mapping (keys: {', '.join(params)} + inference spec)."
    return build


class ConvBNReLU(nn.Sequential):
    """``Conv2d → BatchNorm2d → ReLU`` (the usual conv block of these papers)."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, padding: int | None = None, dilation: int = 1,
                 bias: bool = False):
        padding = dilation * (k // 2) if padding is None else padding
        super().__init__(
            nn.Conv2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, bias=bias),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )
