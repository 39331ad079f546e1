"""Fixtures for the maskcd-map raster tests: tiny deterministic models and seeded scene pairs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import ndimage

from maskcd.models.base import ChangeDetectionOutput, InferenceSpec

SPEC = InferenceSpec(input_bands=("red", "green", "blue"), value_scale=255.0, image_mean=(0.0, 0.0, 0.0),
                     image_std=(1.0, 1.0, 1.0), tile_size=64)


class ConstantModel(torch.nn.Module):
    """Predicts the same probability everywhere (blend invariance: the mosaic must be this constant)."""

    def __init__(self, value: float, spec: InferenceSpec = SPEC):
        super().__init__()
        self.value = value
        self.spec = spec
        self.config = SimpleNamespace(_name_or_path="")
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0

    @property
    def inference_spec(self) -> InferenceSpec:
        return self.spec

    def forward(self, image_a, image_b, labels=None):
        self.calls += image_a.shape[0]
        b, _, h, w = image_a.shape
        return ChangeDetectionOutput(change_prob=torch.full((b, h, w), self.value, device=image_a.device))


class PixelDiffModel(ConstantModel):
    """Pixel-wise model: p = clip(mean |b - a| · gain, 0, 1). Its exact mosaic is known, whatever the tiling."""

    def __init__(self, gain: float = 4.0, spec: InferenceSpec = SPEC):
        super().__init__(0.0, spec)
        self.gain = gain

    def forward(self, image_a, image_b, labels=None):
        self.calls += image_a.shape[0]
        return ChangeDetectionOutput(change_prob=((image_b - image_a).abs().mean(1) * self.gain).clamp(0, 1))

    def reference(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The expected probability for raw ``(C, H, W)`` arrays (spec: /255, mean 0, std 1)."""
        return np.clip(np.abs(b.astype(np.float64) - a.astype(np.float64)).mean(0) / 255.0 * self.gain, 0, 1)


def smooth_image(rng: np.random.Generator, h: int, w: int, bands: int = 3, sigma: float = 3.0) -> np.ndarray:
    """A textured uint8 image (smooth noise), so that bilinear warping stays close to the truth."""
    img = np.stack([ndimage.gaussian_filter(rng.random((h, w)), sigma) for _ in range(bands)])
    img = (img - img.min()) / (np.ptp(img) + 1e-9)
    return (20 + img * 200).astype(np.uint8)


@pytest.fixture
def constant_model():
    return ConstantModel


@pytest.fixture
def pixel_model():
    return PixelDiffModel()


@pytest.fixture
def image_maker():
    return smooth_image
