"""Paired augmentations: the same geometric transform on both dates and the label, optional per-date radiometry."""

from __future__ import annotations

import torch


def paired_geometric(image_a: torch.Tensor, image_b: torch.Tensor, label: torch.Tensor,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random horizontal/vertical flip and 90° rotation, identical on ``(..., C, H, W)`` images and ``(..., H, W)`` label.

    Square inputs keep their shape; for non-square ones rotations by 90°/270° are skipped.
    """
    flip_h, flip_v = (torch.rand(2, generator=generator) < 0.5).tolist()
    k = int(torch.randint(0, 4, (1,), generator=generator))
    if image_a.shape[-1] != image_a.shape[-2]:
        k = 2 * (k // 2)
    out = []
    for x in (image_a, image_b, label):
        if flip_h:
            x = x.flip(-1)
        if flip_v:
            x = x.flip(-2)
        if k:
            x = torch.rot90(x, k, dims=(-2, -1))
        out.append(x.contiguous())
    return tuple(out)


def radiometric_jitter(image: torch.Tensor, generator: torch.Generator, strength: float = 0.1,
                       value_scale: float = 255.0) -> torch.Tensor:
    """Per-band random gain (1 ± ``strength``) and offset (± ``strength``/2 of the value range) on a raw ``(C, H, W)``
    image, clipped to ``[0, value_scale]``; applied independently to each date (it simulates illumination changes that
    are not change). Returns float32."""
    c = image.shape[-3]
    gain = 1 + (torch.rand(c, 1, 1, generator=generator) * 2 - 1) * strength
    offset = (torch.rand(c, 1, 1, generator=generator) * 2 - 1) * strength / 2 * value_scale
    return (image.float() * gain + offset).clamp(0, value_scale)
