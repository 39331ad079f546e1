"""FCN-PP ("FCN++", IEEE GRSL 2019, IEEE document 8618401; usually attributed to Lei et al.'s fully convolutional
network with pyramid pooling for landslide inventory mapping), as UCD implements it (``FCNPP``).

Early fusion: the two dates are concatenated (2 × bands channels) and fed to a U-Net whose "double conv" blocks are
three 3×3 convs with dilations 1, 2 and 3 (each conv → BN → ReLU): ``inc`` (→ 64) at full resolution, then max-pool +
block to 128, 256 and 512 channels at 1/2, 1/4 and 1/8. An ASPP module (512 → 512) at 1/8 concatenates a 1×1 branch,
three depth-wise separable 3×3 branches with dilations 6/12/18 (depth-wise → BN → ReLU → point-wise → BN → ReLU) and an
image-pooling branch (GAP → 1×1 → BN → ReLU, bilinearly broadcast), then 1×1 conv → BN → ReLU → Dropout2d(0.1). The
decoder's four ``Up`` blocks upsample ×2 (bilinear, align_corners), match the skip's size by (possibly negative)
zero-padding, concatenate ``[skip, up]`` and apply a block: 1024 → 256, 512 → 128, 256 → 64, 128 → 64. A 1×1 conv gives
one change logit (UCD's network ends in a sigmoid; maskcd keeps the logit and applies the sigmoid in ``change_prob``).

**The published quirk, kept by default.** ASPP does not downsample, so ``up1`` upsamples the 1/8 ASPP output to 1/4
and its size-matching padding is *negative*: it centre-crops the ×2-zoomed map back to 1/8, so ``up1`` sees the
central half of the ASPP output, misaligned with its skip. UCD's published weights (``UCD-*-FCNPP``) were trained
with this, and reproducing their outputs requires it. ``fix_crop: true`` instead concatenates the ASPP output with
its same-resolution skip directly (no upsampling, no crop); it has the same parameters, so the same checkpoints load,
but their outputs change.

Loss: binary cross-entropy on the sigmoid output, as UCD trains it. No pretrained weights. Inputs are padded to a
multiple of 8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig

from maskcd.errors import ConfigError
from maskcd.models.registry import register_architecture
from maskcd.models.zoo._common import ZooModel, ZooPrediction, bce_loss, config_builder


class FCNPPConfig(PreTrainedConfig):
    """FCN-PP hyper-parameters (defaults = UCD's ``FCNPP``).

    Args:
        widths: Channels of the encoder levels at 1, 1/2, 1/4 and 1/8 ([64, 128, 256, 512]).
        aspp_dilations: Dilations of the three separable ASPP branches ([6, 12, 18]).
        dropout: Dropout2d after the ASPP projection (0.1).
        fix_crop: Feed ``up1`` the ASPP output at its own resolution instead of UCD's upsample-then-centre-crop
            (off by default: the published weights were trained with the crop).
    """

    model_type = "maskcd-fcnpp"

    def __init__(self, widths: list[int] | None = None, aspp_dilations: list[int] | None = None, dropout: float = 0.1,
                 fix_crop: bool = False, **kwargs):
        self.widths = list(widths) if widths is not None else [64, 128, 256, 512]
        if len(self.widths) != 4:
            raise ConfigError(f"FCNPP widths must list 4 levels, got {self.widths}")
        self.aspp_dilations = list(aspp_dilations) if aspp_dilations is not None else [6, 12, 18]
        self.dropout = dropout
        self.fix_crop = fix_crop
        super().__init__(**kwargs)


def dilated_triple(cin: int, cout: int) -> nn.Sequential:
    """Three 3×3 conv → BN → ReLU with dilations 1, 2, 3 (UCD's ``DoubleConv``; flat indices 0..8)."""
    layers: list[nn.Module] = []
    for i, d in enumerate((1, 2, 3)):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=d, dilation=d), nn.BatchNorm2d(cout),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class TripleConv(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.double_conv = dilated_triple(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)  # three dilated convs


class DownBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), TripleConv(cin, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)  # max-pool, then the dilated triple conv


def match_size(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Zero-pad (or, for negative differences, centre-crop) ``x`` to ``ref``'s size, extra row/col at the end."""
    dy, dx = ref.shape[-2] - x.shape[-2], ref.shape[-1] - x.shape[-1]
    if dy == 0 and dx == 0:
        return x
    return F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])


class UpBlock(nn.Module):
    """``cat([skip, match_size(up×2(x))])`` → triple conv; ``upsample=False`` skips the ×2 (``fix_crop``)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = TripleConv(cin, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, upsample: bool = True) -> torch.Tensor:
        if upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.conv(torch.cat([skip, match_size(x, skip)], dim=1))


class SeparableBranch(nn.Module):
    """Depth-wise dilated 3×3 → BN → ReLU → point-wise 1×1 → BN → ReLU (bias-free convs)."""

    def __init__(self, cin: int, cout: int, dilation: int):
        super().__init__()
        self.block = nn.Sequential()
        self.block.add_module("depthwise", nn.Conv2d(cin, cin, 3, padding=dilation, dilation=dilation, groups=cin,
                                                     bias=False))
        self.block.add_module("bn_depth", nn.BatchNorm2d(cin))
        self.block.add_module("relu1", nn.ReLU(inplace=True))
        self.block.add_module("pointwise", nn.Conv2d(cin, cout, 1, bias=False))
        self.block.add_module("bn_point", nn.BatchNorm2d(cout))
        self.block.add_module("relu2", nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def conv1x1_bn_relu(cin: int, cout: int, pool: bool = False) -> nn.Sequential:
    """Named ``conv``/``bn``/``relu`` (plus a leading ``gap`` global pooling when ``pool``)."""
    seq = nn.Sequential()
    if pool:
        seq.add_module("gap", nn.AdaptiveAvgPool2d(1))
    seq.add_module("conv", nn.Conv2d(cin, cout, 1, bias=False))
    seq.add_module("bn", nn.BatchNorm2d(cout))
    seq.add_module("relu", nn.ReLU(inplace=True))
    return seq


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1×1, three separable dilated branches and image pooling, fused by 1×1."""

    def __init__(self, cin: int, cout: int, dilations: list[int], dropout: float):
        super().__init__()
        self.aspp0 = conv1x1_bn_relu(cin, cout)
        for i, d in enumerate(dilations, start=1):
            self.add_module(f"aspp{i}", SeparableBranch(cin, cout, d))
        self.n_dilated = len(dilations)
        self.image_pooling = conv1x1_bn_relu(cin, cout, pool=True)
        self.conv = nn.Conv2d(cout * (2 + len(dilations)), cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.image_pooling(x), size=x.shape[-2:], mode="bilinear", align_corners=True)
        parts = [pooled, self.aspp0(x)] + [getattr(self, f"aspp{i}")(x) for i in range(1, self.n_dilated + 1)]
        return self.dropout(F.relu(self.bn(self.conv(torch.cat(parts, dim=1)))))


class FCNPPHead(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FCNPP(ZooModel):
    """FCN-PP: early-fusion dilated U-Net with ASPP at 1/8 (and UCD's centre crop in ``up1`` unless ``fix_crop``)."""

    config_class = FCNPPConfig
    size_divisor = 8

    def __init__(self, config: FCNPPConfig):
        super().__init__(config)
        w1, w2, w3, w4 = config.widths
        self.inc = TripleConv(2 * self.num_bands, w1)
        self.down1 = DownBlock(w1, w2)
        self.down2 = DownBlock(w2, w3)
        self.down3 = DownBlock(w3, w4)
        self.aspp = ASPP(w4, w4, config.aspp_dilations, config.dropout)
        self.up1 = UpBlock(2 * w4, w3)
        self.up2 = UpBlock(2 * w3, w2)
        self.up3 = UpBlock(2 * w2, w1)
        self.up4 = UpBlock(2 * w1, w1)
        self.outc = FCNPPHead(w1)
        self.post_init()

    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor) -> ZooPrediction:
        s1 = self.inc(torch.cat([image_a, image_b], dim=1))
        s2 = self.down1(s1)
        s3 = self.down2(s2)
        s4 = self.down3(s3)
        x = self.up1(self.aspp(s4), s4, upsample=not self.config.fix_crop)
        x = self.up2(x, s3)
        x = self.up3(x, s2)
        x = self.up4(x, s1)
        return ZooPrediction(self.outc(x))

    def compute_loss(self, prediction: ZooPrediction, labels: torch.Tensor) -> torch.Tensor:
        return bce_loss(prediction.logits, labels)


register_architecture("fcnpp", FCNPP, config_builder(FCNPPConfig))
