"""A2Net (Li, Tang, Liu, Hu, Wang, Gong, IEEE TGRS 2023, "Lightweight remote sensing change detection with
progressive feature aggregation and supervised attention").

Per date, a MobileNetV2 (torchvision, random weights: nothing is downloaded) gives features at strides 4, 8, 16, 32
(24, 32, 96, 320 channels). A Neighbour Feature Aggregation module fuses each level with its neighbours (3×3 conv →
BN → ReLU to 32 channels each; the finer neighbour max-pooled, the coarser bilinearly upsampled; a residual fusion
block with a 1×1 identity projection, 64 channels). A Progressive Temporal Feature Fusion module per level takes
``|F_before - F_after|`` through a cascade of dilated 3×3 convs (dilation 7, 5, 3, 1) with 1×1 shortcuts. The decoder
goes coarse to fine; at levels 1/32, 1/16 and 1/8 a Supervised Attention Module predicts a change mask (1×1 conv),
re-weights the features by ``conv([σ(mask), 1 - σ(mask)])`` and refines them; the 1/4 level is classified by a 1×1 conv.
The four masks are bilinearly upsampled to the input size.

Two recipes (``recipe``):

* ``"ucd"`` (default): as UCD trains and tests it. UCD's wrapper returns the **stride-32** mask (upsampled ×32, sigmoid)
  as ``main_predictions`` and computes its BCE loss and change map from it alone, so that mask is the prediction and
  the only loss term. Only the coarsest path reaches it (backbone, level-5 aggregation, level-5 temporal fusion and the
  first attention module's mask conv); the rest is kept for the published layout, frozen and not computed.
* ``"authors"``: the paper's recipe: prediction from the finest mask (stride 4), binary cross-entropy on all four
  masks, summed (deep supervision).

255 is ignored.

Parameter count: UCD's 3.60 M (2^20 units) is reached only by counting MobileNetV2's final 1×1 conv (320 → 1280),
which the released backbone instantiates but never calls (it has no classifier). maskcd keeps that conv frozen
(``requires_grad=False``) for the same count and layout; ``keep_unused_backbone_layers: false`` drops it (3.37 M).
Inputs are padded to a multiple of 32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenet_v2
from transformers import PreTrainedConfig

from maskcd.errors import ConfigError
from maskcd.models.registry import register_architecture
from maskcd.models.zoo._common import ConvBNReLU, ZooModel, ZooPrediction, bce_loss, config_builder

BACKBONE_CHANNELS = (16, 24, 32, 96, 320)
# torchvision MobileNetV2 ``features`` slices ending at strides 2, 4, 8, 16, 32
BACKBONE_SLICES = ((0, 2), (2, 4), (4, 7), (7, 14), (14, 18))


class A2NetConfig(PreTrainedConfig):
    """A2Net hyper-parameters.

    Args:
        width: Channels after aggregation and temporal fusion (64; the per-neighbour branches use half).
        keep_unused_backbone_layers: Keep MobileNetV2's never-called last 1×1 conv (frozen), as released.
        recipe: ``"ucd"`` (default: stride-32 mask as prediction and loss, as UCD) or ``"authors"`` (stride-4 mask,
            deep supervision on all four).
    """

    model_type = "maskcd-a2net"

    def __init__(self, width: int = 64, keep_unused_backbone_layers: bool = True, recipe: str = "ucd", **kwargs):
        if recipe not in ("ucd", "authors"):
            raise ConfigError(f"A2Net recipe must be 'ucd' or 'authors', got {recipe!r}")
        self.recipe = recipe
        self.width = width
        self.keep_unused_backbone_layers = keep_unused_backbone_layers
        super().__init__(**kwargs)


def _branch(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers = [nn.MaxPool2d(2, 2)] if pool else []
    return nn.Sequential(*layers, ConvBNReLU(cin, cout, 3, bias=True))


class FeatureFusion(nn.Module):
    """``relu(conv_bn_relu_conv_bn(concat) + conv1x1(identity))``."""

    def __init__(self, fuse_d: int, id_d: int, out_d: int):
        super().__init__()
        self.conv_fuse = nn.Sequential(
            ConvBNReLU(fuse_d, out_d, 3, bias=True), nn.Conv2d(out_d, out_d, 3, padding=1), nn.BatchNorm2d(out_d)
        )
        self.conv_identity = nn.Conv2d(id_d, out_d, 1)

    def forward(self, fused: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv_fuse(fused) + self.conv_identity(identity))


class NeighborAggregation(nn.Module):
    """Each of levels 2..5 fused with its finer (max-pooled) and coarser (upsampled) neighbours."""

    def __init__(self, in_d: tuple[int, ...], out_d: int):
        super().__init__()
        mid = out_d // 2
        c2, c3, c4, c5 = in_d[1:]
        self.s2 = nn.ModuleList([_branch(c2, mid, False), _branch(c3, mid, False)])
        self.f2 = FeatureFusion(2 * mid, c2, out_d)
        self.s3 = nn.ModuleList([_branch(c2, mid, True), _branch(c3, mid, False), _branch(c4, mid, False)])
        self.f3 = FeatureFusion(3 * mid, c3, out_d)
        self.s4 = nn.ModuleList([_branch(c3, mid, True), _branch(c4, mid, False), _branch(c5, mid, False)])
        self.f4 = FeatureFusion(3 * mid, c4, out_d)
        self.s5 = nn.ModuleList([_branch(c4, mid, True), _branch(c5, mid, False)])
        self.f5 = FeatureFusion(2 * mid, c5, out_d)

    @staticmethod
    def _up(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, c2, c3, c4, c5):
        a = self.s2[0](c2)
        s2 = self.f2(torch.cat([a, self._up(self.s2[1](c3), a)], 1), c2)
        a = self.s3[1](c3)
        s3 = self.f3(torch.cat([self.s3[0](c2), a, self._up(self.s3[2](c4), a)], 1), c3)
        a = self.s4[1](c4)
        s4 = self.f4(torch.cat([self.s4[0](c3), a, self._up(self.s4[2](c5), a)], 1), c4)
        s5 = self.f5(torch.cat([self.s5[0](c4), self.s5[1](c5)], 1), c5)
        return s2, s3, s4, s5


class TemporalFusion(nn.Module):
    """Progressive fusion of ``|x1 - x2|`` through dilated convs (7, 5, 3, 1) with 1×1 shortcuts."""

    def __init__(self, d: int):
        super().__init__()
        self.branch1 = nn.Sequential(nn.Conv2d(d, d, 3, padding=7, dilation=7), nn.BatchNorm2d(d))
        self.branch2 = nn.Conv2d(d, d, 1)
        self.branch2_f = nn.Sequential(nn.Conv2d(d, d, 3, padding=5, dilation=5), nn.BatchNorm2d(d))
        self.branch3 = nn.Conv2d(d, d, 1)
        self.branch3_f = nn.Sequential(nn.Conv2d(d, d, 3, padding=3, dilation=3), nn.BatchNorm2d(d))
        self.branch4 = nn.Conv2d(d, d, 1)
        self.branch4_f = nn.Sequential(nn.Conv2d(d, d, 3, padding=1), nn.BatchNorm2d(d))
        self.branch5 = nn.Conv2d(d, d, 1)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        x = (x1 - x2).abs()
        y = self.branch1(x)
        y = self.branch2_f(F.relu(self.branch2(x) + y))
        y = self.branch3_f(F.relu(self.branch3(x) + y))
        y = self.branch4_f(F.relu(self.branch4(x) + y))
        return F.relu(self.branch5(x) + y)


class SupervisedAttention(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.cls = nn.Conv2d(d, 1, 1)
        self.conv_context = nn.Sequential(nn.Conv2d(2, d, 1), nn.BatchNorm2d(d), nn.ReLU(inplace=True))
        self.conv2 = ConvBNReLU(d, d, 3, bias=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.cls(x)
        p = torch.sigmoid(mask)
        return self.conv2(x * self.conv_context(torch.cat([p, 1 - p], 1))), mask


class A2Net(ZooModel):
    """A2Net: MobileNetV2 + neighbour aggregation + progressive temporal fusion + supervised attention decoder."""

    config_class = A2NetConfig
    size_divisor = 32

    def __init__(self, config: A2NetConfig):
        super().__init__(config)
        d = config.width
        self.backbone = mobilenet_v2(weights=None)
        if self.num_bands != 3:
            self.backbone.features[0][0] = nn.Conv2d(self.num_bands, 32, 3, stride=2, padding=1, bias=False)
        self.backbone.classifier = nn.Identity()  # the released MobileNetV2 has no classifier
        if not config.keep_unused_backbone_layers:
            self.backbone.features[18] = nn.Identity()
        self.aggregation = NeighborAggregation(BACKBONE_CHANNELS, d)
        self.temporal = nn.ModuleList(TemporalFusion(d) for _ in range(4))
        self.sam = nn.ModuleList(SupervisedAttention(d) for _ in range(3))  # levels 5, 4, 3
        self.conv_p = nn.ModuleList(ConvBNReLU(d, d, 3, bias=True) for _ in range(3))  # levels 4, 3, 2
        self.cls = nn.Conv2d(d, 1, 1)
        self.post_init()
        self.freeze_unused()

    def frozen_modules(self) -> list[nn.Module]:
        frozen = [self.backbone.features[18]] if self.config.keep_unused_backbone_layers else []
        if self.config.recipe == "ucd":  # cannot reach the stride-32 mask
            agg = self.aggregation
            frozen += [agg.s2, agg.f2, agg.s3, agg.f3, agg.s4, agg.f4, self.temporal[0], self.temporal[1],
                       self.temporal[2], self.sam[0].conv_context, self.sam[0].conv2, self.sam[1], self.sam[2],
                       self.conv_p, self.cls]
        return frozen

    def _backbone(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for start, stop in BACKBONE_SLICES:
            for i in range(start, stop):
                x = self.backbone.features[i](x)
            out.append(x)
        return out

    def _levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.aggregation(*self._backbone(x)[1:])

    def _level5(self, x: torch.Tensor) -> torch.Tensor:
        *_, c4, c5 = self._backbone(x)
        agg = self.aggregation
        return agg.f5(torch.cat([agg.s5[0](c4), agg.s5[1](c5)], 1), c5)

    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor) -> ZooPrediction:
        if self.config.recipe == "ucd":
            mask5 = self.sam[0].cls(self.temporal[3](self._level5(image_a), self._level5(image_b)))
            up = F.interpolate(mask5, size=image_a.shape[-2:], mode="bilinear", align_corners=False)
            return ZooPrediction(up)
        c2, c3, c4, c5 = (t(a, b) for t, a, b in zip(self.temporal, self._levels(image_a), self._levels(image_b)))
        p, mask5 = self.sam[0](c5)
        masks = [mask5]
        for i, d in enumerate((c4, c3, c2)):
            p = self.conv_p[i](d + F.interpolate(p, size=d.shape[-2:], mode="bilinear", align_corners=False))
            if i < 2:
                p, m = self.sam[i + 1](p)
                masks.append(m)
        masks.append(self.cls(p))
        size = image_a.shape[-2:]
        masks = [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in masks]
        return ZooPrediction(masks[-1], aux=masks[:-1])

    def compute_loss(self, prediction: ZooPrediction, labels: torch.Tensor) -> torch.Tensor:
        if self.config.recipe == "ucd":
            return bce_loss(prediction.logits, labels)
        return sum(bce_loss(m, labels) for m in [prediction.logits, *prediction.aux])


register_architecture("a2net", A2Net, config_builder(A2NetConfig))
