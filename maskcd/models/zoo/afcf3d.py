"""AFCF3D-Net, Adjacent-level Feature Cross-Fusion with 3D CNN (Ye, Wang, Zhou, Xie, Chen, Wang, Zhang, Zhou, IEEE
TGRS 2023, "Adjacent-level feature cross-fusion with 3-D CNN for remote sensing image change detection"), as UCD
builds it (``AFCF3D``: ResNet-18 instead of the authors' ResNet-50, 32 decoder channels).

**3D backbone.** The two dates are stacked along a time axis, ``(B, C, T=2, H, W)``, and stay stacked to the end. A
ResNet-18 is "decomposed" into 3D: every 3×3 / 7×7 convolution becomes a ``(1, k, k)`` spatial Conv3d (the 2D kernel)
followed by temporal mixing with three bias-free 1×1×1 convs ``W1, W2, W3``: ``T1' = W2·T1 + W3·T2`` and
``T2' = W1·T1 + W2·T2`` (``W2`` initialised to the identity, ``W1``/``W3`` to zero, so that a fresh network is exactly
a Siamese 2D ResNet). BatchNorm normalises per channel over (N, T, H, W); the max-pool is ``(1, 3, 3)`` with stride
``(1, 2, 2)``; shortcut projections are ``(1, 1, 1)`` convs with stride ``(1, 2, 2)``. As in UCD's ``Bottleneck3d``,
each residual block applies ReLU after *both* of its BN layers and again after the residual sum. Levels: 64@1/2 (the
stem, before pooling), 64@1/4, 128@1/8, 256@1/16, 512@1/32, each with T = 2.

**Decoder** (32 channels; every "conv" below is Conv3d with bias → BatchNorm3d → ReLU). Each level is reduced to 32
channels (1×1×1 then two 3×3×3 convs). Adjacent-level cross-fusion (AFCF) blocks then mix each level with its
neighbours: the finer neighbour through a ``(1, 3, 3)`` stride-2 conv, the coarser one through ×2 bilinear upsampling
(align_corners; time folded into channels) and a 3×3×3 conv; the sum goes through a 3×3×3 and a 1×1×1 conv, a
coordinate-attention variant (``CMA``: H- and W-pooled descriptors, shared 1×1 conv → BN → ReLU, separate 1×1 convs
→ sigmoid, ``x · a_h · a_w``) on the time-folded 64 channels, and a residual add of the level. ``AFCF1`` fuses levels
0+1, ``AFCF3`` levels 3+4, and **one ``AFCF2`` instance is applied to the three triplets (0,1,2), (1,2,3), (2,3,4)**, as
in the released code. A UNet3+-style decoder then rebuilds levels 3, 2, 1, 0: at each target level it gathers all
five levels (coarser ones upsampled step by step through one shared 3×3×3 conv, finer ones pooled by one shared
``(1, 3, 3)`` stride-2 conv), **concatenates them along time** (T = 10), applies a 3×3×3 + 1×1×1 conv, CMA on the
320 folded channels and a residual add, and reduces T from 10 to 2 (3×3×3; ``(4, 3, 3)`` with time stride 2;
``(3, 1, 1)``); the last level reduces to T = 1 (final kernel ``(4, 1, 1)``). A head (1×1 conv 32 → 64 → BN, 1×1
64 → 32 → BN, both bias-free and without ReLU, then a 1×1 conv to one channel) gives the change logit at 1/2.

UCD's network applies the sigmoid at 1/2 and bilinearly upsamples the *probabilities* (align_corners) to the input
size. maskcd reproduces exactly that and reports ``logit(p)`` (``p`` clamped to [1e-6, 1 − 1e-6]) as the change
logit, so ``change_prob`` equals UCD's output to within 1e-6.

UCD builds, and counts in its 16.83 M (2^20 units), modules the forward pass never calls: the decoder's ``downT0``,
four ``superD`` and four ``superout`` deep-supervision heads, and ``AFCF1``'s ``conv_down`` (≈ 0.10 M). maskcd keeps
them, frozen (``requires_grad=False``), for the published parameter count and checkpoint layout;
``keep_unused_layers: false`` drops them.

Loss: binary cross-entropy on the (upsampled) probabilities, as UCD trains it (the authors used BCE + Dice with AdamW
and a cosine schedule). UCD starts from ImageNet: ``backbone_weights: imagenet`` loads torchvision's ResNet-18
``IMAGENET1K_V1`` into the spatial kernels through torchvision's cache (see :mod:`maskcd.models.zoo._pretrained`);
the default is random initialisation (spatial kernels Kaiming-normal, fan-out, as torchvision's ResNet). Inputs are
padded to a multiple of 32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig

from maskcd.models.registry import register_architecture
from maskcd.models.zoo._common import ZooModel, ZooPrediction, bce_loss, config_builder
from maskcd.models.zoo._pretrained import check_backbone_weights, maybe_load_backbone

RESNET18_WIDTHS = (64, 64, 128, 256, 512)  # stem, layer1..layer4
PROB_EPS = 1e-6


class AFCF3DConfig(PreTrainedConfig):
    """AFCF3D-Net hyper-parameters (defaults = UCD's ``Netmodel(32, resnet18)``).

    Args:
        channels: Decoder width (32).
        keep_unused_layers: Keep the never-called ``downT0``, ``superD*``, ``superout*`` and ``AFCF1.conv_down``
            (frozen), as UCD builds and stores them.
        backbone_weights: ``null`` (random init) or ``imagenet`` (torchvision ResNet-18 IMAGENET1K_V1, as UCD).
    """

    model_type = "maskcd-afcf3d"

    def __init__(self, channels: int = 32, keep_unused_layers: bool = True, backbone_weights: str | None = None,
                 **kwargs):
        self.channels = channels
        self.keep_unused_layers = keep_unused_layers
        self.backbone_weights = check_backbone_weights(backbone_weights, "resnet18")
        super().__init__(**kwargs)


# --------------------------------------------------------------------------- helpers on (B, C, T, H, W) tensors


def fold_time(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, T, H, W) → (B, C·T, H, W)`` (channel-major, time-minor)."""
    b, c, t, h, w = x.shape
    return x.reshape(b, c * t, h, w)


def unfold_time(x: torch.Tensor, t: int) -> torch.Tensor:
    b, ct, h, w = x.shape
    return x.reshape(b, ct // t, t, h, w)


def upsample2(x: torch.Tensor) -> torch.Tensor:
    """×2 bilinear (align_corners) upsampling of every time slice (time folded into channels)."""
    up = F.interpolate(fold_time(x), scale_factor=2, mode="bilinear", align_corners=True)
    return unfold_time(up, x.shape[2])


# --------------------------------------------------------------------------- decomposed 3D ResNet-18


class DecomposedConv(nn.Module):
    """A 2D conv as a ``(1, k, k)`` Conv3d, then temporal 1×1×1 mixing of the two time steps (bias-free)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, padding: int):
        super().__init__()
        self.conv3d_spatial = nn.Conv3d(cin, cout, (1, k, k), stride=(1, stride, stride), padding=(0, padding, padding),
                                        bias=False)
        self.conv3d_time_1 = nn.Conv3d(cout, cout, 1, bias=False)  # T1 -> T2'
        self.conv3d_time_2 = nn.Conv3d(cout, cout, 1, bias=False)  # T -> T' (identity at init)
        self.conv3d_time_3 = nn.Conv3d(cout, cout, 1, bias=False)  # T2 -> T1'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.conv3d_spatial(x)
        t1, t2 = s[:, :, 0:1], s[:, :, 1:2]
        first = self.conv3d_time_2(t1) + self.conv3d_time_3(t2)
        second = self.conv3d_time_1(t1) + self.conv3d_time_2(t2)
        return torch.cat([first, second], dim=2)


class Block3D(nn.Module):
    """ResNet basic block in 3D, with UCD's ReLU after ``bn2`` (before the residual sum) as well as after it."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = DecomposedConv(cin, cout, 3, stride, 1)
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = DecomposedConv(cout, cout, 3, 1, 1)
        self.bn2 = nn.BatchNorm3d(cout)
        projection = stride != 1 or cin != cout
        self.downsample = nn.Sequential(
            nn.Conv3d(cin, cout, 1, stride=(1, stride, stride), bias=False), nn.BatchNorm3d(cout)
        ) if projection else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class ResNet3D(nn.Module):
    """ResNet-18 decomposed into 3D (no pooling head): returns the stem output and the four stage outputs."""

    def __init__(self, in_channels: int):
        super().__init__()
        w = RESNET18_WIDTHS
        self.conv1 = DecomposedConv(in_channels, w[0], 7, 2, 3)
        self.bn1 = nn.BatchNorm3d(w[0])
        for i in range(1, 5):
            stride = 1 if i == 1 else 2
            self.add_module(f"layer{i}", nn.Sequential(Block3D(w[i - 1], w[i], stride), Block3D(w[i], w[i], 1)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x0 = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool3d(x0, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        feats = [x0]
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = stage(x)
            feats.append(x)
        return feats


def imagenet_to_3d(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ResNet-18 weights onto :class:`ResNet3D`: 2D kernels gain a time axis of 1, ``fc`` is dropped."""
    out = {}
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        if value.dim() == 4:  # a conv kernel
            value = value.unsqueeze(2)
            if ".downsample." not in key:  # shortcut projections are plain Conv3d, the others decomposed
                key = key.replace(".weight", ".conv3d_spatial.weight")
        out[key] = value
    return out


# --------------------------------------------------------------------------- decoder


class ConvBNReLU3d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv_bn = nn.Sequential(nn.Conv3d(cin, cout, kernel, stride=stride, padding=padding),
                                     nn.BatchNorm3d(cout), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_bn(x)


class ConvBN2d(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv_bn = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_bn(x)


def conv333(c: int) -> ConvBNReLU3d:
    return ConvBNReLU3d(c, c, 3, padding=1)


def stride2_conv(c: int) -> ConvBNReLU3d:
    """``(1, 3, 3)`` conv with spatial stride 2 (halves H, W; keeps T)."""
    return ConvBNReLU3d(c, c, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))


def fuse_convs(c: int) -> nn.Sequential:
    return nn.Sequential(conv333(c), ConvBNReLU3d(c, c, 1))


def time_reduction(c: int, last: int) -> nn.Sequential:
    """T 10 → 10 → 4 → ``4 - last + 1`` (2 with ``last`` 3, 1 with ``last`` 4)."""
    return nn.Sequential(conv333(c), ConvBNReLU3d(c, c, (4, 3, 3), stride=(2, 1, 1), padding=(0, 1, 1)),
                         ConvBNReLU3d(c, c, (last, 1, 1)))


def head(c: int) -> nn.Sequential:
    return nn.Sequential(ConvBN2d(c, 2 * c), ConvBN2d(2 * c, c), nn.Conv2d(c, 1, 1))


class CMA(nn.Module):
    """Coordinate-attention variant: ``x · sigmoid(conv_h(y_h)) · sigmoid(conv_w(y_w))`` with ``y`` the shared
    1×1 conv → BN → ReLU of the H- and W-averaged descriptors (middle width ``max(8, C)``)."""

    def __init__(self, channels: int):
        super().__init__()
        mid = max(8, channels)
        self.conv1 = nn.Conv2d(channels, mid, 1)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, channels, 1)
        self.conv3 = nn.Conv2d(mid, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        along_h = F.adaptive_avg_pool2d(x, (None, 1))  # (B, C, H, 1)
        along_w = F.adaptive_avg_pool2d(x, (1, None)).transpose(2, 3)  # (B, C, W, 1)
        y = F.relu(self.bn1(self.conv1(torch.cat([along_h, along_w], dim=2))))
        y_h, y_w = y.split([h, w], dim=2)
        gate_h = torch.sigmoid(self.conv2(y_h))
        gate_w = torch.sigmoid(self.conv3(y_w.transpose(2, 3)))
        return x * gate_w * gate_h


def cma_on_time(cma: CMA, x: torch.Tensor) -> torch.Tensor:
    return unfold_time(cma(fold_time(x)), x.shape[2])


class AFCF(nn.Module):
    """Adjacent-level cross-fusion around a middle level, with an optional finer and coarser neighbour."""

    def __init__(self, c: int, time_steps: int = 2, upper: bool = True, lower: bool = True):
        super().__init__()
        if upper:
            self.conv_up = conv333(c)
        if lower:
            self.conv_down = stride2_conv(c)
        self.conv_cat = fuse_convs(c)
        self.SE = CMA(c * time_steps)

    def forward(self, mid: torch.Tensor, finer: torch.Tensor | None = None,
                coarser: torch.Tensor | None = None) -> torch.Tensor:
        parts = []
        if finer is not None:
            parts.append(self.conv_down(finer))
        parts.append(mid)
        if coarser is not None:
            parts.append(self.conv_up(upsample2(coarser)))
        total = parts[0]
        for p in parts[1:]:
            total = total + p
        return cma_on_time(self.SE, self.conv_cat(total)) + mid


class AFCFFusion(nn.Module):
    """``AFCF1`` (levels 0+1), one shared ``AFCF2`` (three triplets) and ``AFCF3`` (levels 3+4)."""

    def __init__(self, c: int, keep_unused: bool):
        super().__init__()
        self.AFCF1 = AFCF(c, lower=keep_unused)  # its conv_down exists only in the published layout
        self.AFCF2 = AFCF(c)
        self.AFCF3 = AFCF(c, upper=False)

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor]:
        return [
            self.AFCF1(x[0], coarser=x[1]),
            self.AFCF2(x[1], finer=x[0], coarser=x[2]),
            self.AFCF2(x[2], finer=x[1], coarser=x[3]),
            self.AFCF2(x[3], finer=x[2], coarser=x[4]),
            self.AFCF3(x[4], finer=x[3]),
        ]


class FullScaleDecoder(nn.Module):
    """UNet3+-style decoder along time: levels 3 → 0, each from all five levels concatenated along T."""

    def __init__(self, c: int, keep_unused: bool):
        super().__init__()
        self.conv_upsample = conv333(c)
        self.conv_downsample = stride2_conv(c)
        for k in (3, 2, 1, 0):
            self.add_module(f"conv_cat_{k}", fuse_convs(c))
        for k in (3, 2, 1):
            self.add_module(f"downT{k}", time_reduction(c, 3))
        if keep_unused:
            self.downT0 = time_reduction(c, 3)
        self.downfinal = time_reduction(c, 4)
        if keep_unused:
            for k in (1, 2, 3, 4):
                self.add_module(f"superD{k}", ConvBNReLU3d(c, c, (2, 1, 1)))
            for k in (1, 2, 3, 4):
                self.add_module(f"superout{k}", head(c))
        self.out = head(c)
        for k in (3, 2, 1, 0):
            self.add_module(f"SE_{k}", CMA(10 * c))

    def unused(self) -> list[nn.Module]:
        names = ["downT0", *(f"superD{k}" for k in range(1, 5)), *(f"superout{k}" for k in range(1, 5))]
        return [getattr(self, n) for n in names if hasattr(self, n)]

    def _up(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_upsample(upsample2(x))

    def _level(self, k: int, parts: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.cat(parts, dim=2)  # T = 2 × 5
        refined = cma_on_time(getattr(self, f"SE_{k}"), getattr(self, f"conv_cat_{k}")(stacked))
        reduce = self.downfinal if k == 0 else getattr(self, f"downT{k}")
        return reduce(stacked + refined)

    def forward(self, f: list[torch.Tensor]) -> torch.Tensor:
        down = self.conv_downsample
        f0_d1 = down(f[0])
        f0_d2 = down(f0_d1)
        f0_d3 = down(f0_d2)
        f1_d2 = down(f[1])
        f1_d3 = down(f1_d2)
        f2_d3 = down(f[2])
        u4 = self._up(f[4])  # 1/16
        d3 = self._level(3, [u4, f[3], f2_d3, f1_d3, f0_d3])
        u3 = self._up(d3)  # 1/8 (the call order of the shared conv follows the published code)
        u4 = self._up(u4)
        d2 = self._level(2, [u4, u3, f[2], f1_d2, f0_d2])
        u2, u3, u4 = self._up(d2), self._up(u3), self._up(u4)  # 1/4
        d1 = self._level(1, [u4, u3, u2, f[1], f0_d1])
        u1, u2, u3, u4 = self._up(d1), self._up(u2), self._up(u3), self._up(u4)  # 1/2
        d0 = self._level(0, [f[0], u4, u3, u2, u1])
        return self.out(d0.squeeze(2))


class Reduction(nn.Module):
    """1×1×1 conv to ``cout`` channels, then two 3×3×3 convs."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.reduce = nn.Sequential(ConvBNReLU3d(cin, cout, 1), conv333(cout), conv333(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduce(x)


class AFCF3DDecoder(nn.Module):
    """Per-level reduction to ``c`` channels, AFCF fusion, full-scale decoder (one change logit at 1/2)."""

    def __init__(self, c: int, keep_unused: bool):
        super().__init__()
        for i, cin in enumerate(RESNET18_WIDTHS):
            self.add_module(f"reduction{i}", Reduction(cin, c))
        self.AFCF_fuse = AFCFFusion(c, keep_unused)
        self.output = FullScaleDecoder(c, keep_unused)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        reduced = [getattr(self, f"reduction{i}")(x) for i, x in enumerate(feats)]
        return self.output(self.AFCF_fuse(reduced))


class AFCF3D(ZooModel):
    """AFCF3D-Net: 3D-decomposed ResNet-18 on the stacked dates + AFCF fusion + full-scale time decoder."""

    config_class = AFCF3DConfig
    size_divisor = 32

    def __init__(self, config: AFCF3DConfig):
        super().__init__(config)
        self.resnet = ResNet3D(self.num_bands)
        self.decoder = AFCF3DDecoder(config.channels, config.keep_unused_layers)
        self.post_init()
        keep = r".*conv3d_time_" + ("" if self.num_bands == 3 else r"|conv1\.")
        maybe_load_backbone(self.resnet, config.backbone_weights, "resnet18", keep=keep, convert=imagenet_to_3d)
        self.freeze_unused()

    def frozen_modules(self) -> list[nn.Module]:
        if not self.config.keep_unused_layers:
            return []
        return [*self.decoder.output.unused(), self.decoder.AFCF_fuse.AFCF1.conv_down]

    def _init_extra(self, module: nn.Module) -> None:
        if isinstance(module, DecomposedConv):  # a fresh network is a Siamese 2D ResNet: W2 = I, W1 = W3 = 0
            nn.init.kaiming_normal_(module.conv3d_spatial.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.conv3d_time_1.weight)
            nn.init.zeros_(module.conv3d_time_3.weight)
            nn.init.dirac_(module.conv3d_time_2.weight)  # 1×1×1 kernels: the identity
        elif isinstance(module, Block3D) and module.downsample is not None:
            nn.init.kaiming_normal_(module.downsample[0].weight, mode="fan_out", nonlinearity="relu")

    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor) -> ZooPrediction:
        x = torch.stack([image_a, image_b], dim=2)  # (B, C, T=2, H, W)
        logit_half = self.decoder(self.resnet(x))
        prob = F.interpolate(torch.sigmoid(logit_half), size=image_a.shape[-2:], mode="bilinear", align_corners=True)
        return ZooPrediction(torch.logit(prob, eps=PROB_EPS))

    def compute_loss(self, prediction: ZooPrediction, labels: torch.Tensor) -> torch.Tensor:
        return bce_loss(prediction.logits, labels)


register_architecture("afcf3d", AFCF3D, config_builder(AFCF3DConfig))
