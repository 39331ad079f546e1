"""DMINet (Feng, Xu, Jiang, Liu, Shi, IEEE TGRS 2023, "Change detection on remote sensing images using dual-branch
multilevel intertemporal network").

A ResNet-18 (torchvision, ``layer4`` removed, random weights: nothing is downloaded) encodes each date to levels at
strides 4, 8 and 16 (64, 128, 256 channels). At each level an intertemporal joint-attention block (SelfAtt +
CrossAtt) computes queries from *both* dates (concatenated 1×1 projections of C/8 channels each) against each
date's own keys (C/4) and values (C), adds the result back with a learnable zero-initialised scale γ, and fuses the two
refined maps (3×3 conv → BN → ReLU). Two decoders run coarse to fine with the same aggregation block (cross-gating
of the 3×3-projected lateral and deeper maps, 3×3 conv → BN → ReLU): one on the fused maps (subtraction-free branch)
and one on the absolute differences of the refined maps (difference branch), each with 1×1 conv+BN transitions. Each
branch predicts at stride 4 and stride 8 (3×3 conv → BN → ReLU → 3×3 conv to 2 classes), upsampled to the input size.

Two recipes (``recipe``):

* ``"ucd"`` (default): as UCD trains and tests it. UCD's wrapper returns the difference branch's stride-8 output as
  ``main_predictions``, and UCD computes its loss (cross-entropy) and change map from ``main_predictions`` only. So
  the prediction is that output and the loss is cross-entropy on it; the modules that cannot reach it (the fused
  decoder, the stride-4 difference decoder, the other three heads, the stride-4 joint attention and the fusion convs
  of the joint-attention blocks) are kept for the published layout, frozen and not computed.
* ``"authors"``: the DMINet authors' recipe: cross-entropy on all four outputs with equal weights, prediction from the
  sum of the two branches' stride-4 logits.

255 is ignored. The never-called ``fc`` of the torchvision ResNet-18, which the released code
keeps (UCD's 6.44 M in 2^20 units counts it), is kept frozen; ``keep_unused_resnet_layers: false`` drops it.
Inputs are padded to a multiple of 16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18
from transformers import PreTrainedConfig

from maskcd.errors import ConfigError
from maskcd.models.registry import register_architecture
from maskcd.models.zoo._common import ZooModel, ZooPrediction, ce_loss, config_builder


class DMINetConfig(PreTrainedConfig):
    """DMINet hyper-parameters.

    Args:
        keep_unused_resnet_layers: Keep ResNet-18's never-called ``fc`` (frozen), as the released code does.
        recipe: ``"ucd"`` (default; prediction and loss from the stride-8 difference head, as UCD) or ``"authors"``
            (four-output loss, sum of the stride-4 heads as prediction).
    """

    model_type = "maskcd-dminet"

    def __init__(self, keep_unused_resnet_layers: bool = True, recipe: str = "ucd", **kwargs):
        if recipe not in ("ucd", "authors"):
            raise ConfigError(f"DMINet recipe must be 'ucd' or 'authors', got {recipe!r}")
        self.keep_unused_resnet_layers = keep_unused_resnet_layers
        self.recipe = recipe
        super().__init__(**kwargs)


class JointAttention(nn.Module):
    """Intertemporal joint attention: shared queries from both dates, per-date keys/values, γ-scaled residuals."""

    def __init__(self, channels: int):
        super().__init__()
        self.query1 = nn.Conv2d(channels, channels // 8, 1)
        self.key1 = nn.Conv2d(channels, channels // 4, 1)
        self.value1 = nn.Conv2d(channels, channels, 1)
        self.query2 = nn.Conv2d(channels, channels // 8, 1)
        self.key2 = nn.Conv2d(channels, channels // 4, 1)
        self.value2 = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.conv_cat = nn.Sequential(
            nn.Conv2d(2 * channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()
        )

    def forward(self, x1: torch.Tensor, x2: torch.Tensor):
        b, c, h, w = x1.shape
        q = torch.cat([self.query1(x1), self.query2(x2)], 1).reshape(b, -1, h * w).transpose(1, 2)  # (B, N, C/4)

        def attend(key, value, x):
            attn = torch.bmm(q, key(x).reshape(b, -1, h * w)).softmax(dim=-1)  # (B, N, N)
            out = torch.bmm(value(x).reshape(b, c, h * w), attn.transpose(1, 2)).reshape(b, c, h, w)
            return self.gamma * out + x

        out1 = attend(self.key1, self.value1, x1)
        out2 = attend(self.key2, self.value2, x2)
        return self.conv_cat(torch.cat([out1, out2], 1)), out1, out2


class Aggregation(nn.Module):
    """Cross-gated fusion of a lateral map with the (upsampled) deeper map."""

    def __init__(self, c_left: int, c_down: int, c_out: int):
        super().__init__()
        self.conv_d1 = nn.Conv2d(c_down, c_out, 3, padding=1)
        self.conv_l = nn.Conv2d(c_left, c_out, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * c_out, c_out, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(c_out)

    def forward(self, left: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
        size = left.shape[-2:]
        down_mask = F.interpolate(self.conv_d1(down), size=size, mode="bilinear", align_corners=False)
        down_up = F.interpolate(down, size=size, mode="bilinear", align_corners=False)
        z1 = F.relu(self.conv_l(left) * down_up)
        z2 = F.relu(down_mask * left)
        return F.relu(self.bn3(self.conv3(torch.cat([z1, z2], 1))))


def _transition(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))


def _head(cin: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
                         nn.Conv2d(32, 2, 3, padding=1))


class DMINet(ZooModel):
    """DMINet: ResNet-18 (to layer3) + joint attention per level + fused and difference decoders."""

    config_class = DMINetConfig
    size_divisor = 16

    def __init__(self, config: DMINetConfig):
        super().__init__(config)
        self.resnet = resnet18(weights=None)
        if self.num_bands != 3:
            self.resnet.conv1 = nn.Conv2d(self.num_bands, 64, 7, stride=2, padding=3, bias=False)
        self.resnet.layer4 = nn.Identity()
        if not config.keep_unused_resnet_layers:
            self.resnet.fc = nn.Identity()
        self.cross = nn.ModuleList([JointAttention(256), JointAttention(128), JointAttention(64)])
        self.trans_sum = nn.ModuleList([_transition(256, 128), _transition(128, 64)])
        self.agg_sum = nn.ModuleList([Aggregation(128, 128, 128), Aggregation(64, 64, 64)])
        self.trans_diff = nn.ModuleList([_transition(256, 128), _transition(128, 64)])
        self.agg_diff = nn.ModuleList([Aggregation(128, 128, 128), Aggregation(64, 64, 64)])
        self.head_sum, self.head_diff = _head(64), _head(64)
        self.head_sum_8, self.head_diff_8 = _head(128), _head(128)
        self.post_init()
        self.freeze_unused()

    def frozen_modules(self) -> list[nn.Module]:
        frozen = [self.resnet.fc] if self.config.keep_unused_resnet_layers else []
        if self.config.recipe == "ucd":  # cannot reach the stride-8 difference head
            frozen += [self.cross[2], self.cross[0].conv_cat, self.cross[1].conv_cat, self.trans_sum, self.agg_sum,
                       self.trans_diff[1], self.agg_diff[1], self.head_sum, self.head_diff, self.head_sum_8]
        return frozen

    def _init_extra(self, module: nn.Module) -> None:
        if isinstance(module, JointAttention):
            nn.init.zeros_(module.gamma)

    def _levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        r = self.resnet
        c1 = r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x)))))
        c2 = r.layer2(c1)
        return [c1, c2, r.layer3(c2)]

    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor) -> ZooPrediction:
        a1, a2, a3 = self._levels(image_a)
        b1, b2, b3 = self._levels(image_b)
        size = image_a.shape[-2:]

        def up(x):
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

        if self.config.recipe == "ucd":
            _, r1_3, r2_3 = self.cross[0](a3, b3)
            _, r1_2, r2_2 = self.cross[1](a2, b2)
            d8 = self.agg_diff[0]((r1_2 - r2_2).abs(), self.trans_diff[0]((r1_3 - r2_3).abs()))
            return ZooPrediction(self.head_diff_8(up(d8)))
        s3, r1_3, r2_3 = self.cross[0](a3, b3)
        s2, r1_2, r2_2 = self.cross[1](a2, b2)
        s1, r1_1, r2_1 = self.cross[2](a1, b1)
        out8 = self.agg_sum[0](s2, self.trans_sum[0](s3))
        out4 = self.agg_sum[1](s1, self.trans_sum[1](out8))
        d8 = self.agg_diff[0]((r1_2 - r2_2).abs(), self.trans_diff[0]((r1_3 - r2_3).abs()))
        d4 = self.agg_diff[1]((r1_1 - r2_1).abs(), self.trans_diff[1](d8))

        outs = [self.head_sum(up(out4)), self.head_diff(up(d4)), self.head_sum_8(up(out8)), self.head_diff_8(up(d8))]
        return ZooPrediction(outs[0] + outs[1], aux=outs)

    def compute_loss(self, prediction: ZooPrediction, labels: torch.Tensor) -> torch.Tensor:
        if self.config.recipe == "ucd":
            return ce_loss(prediction.logits, labels)
        return sum(ce_loss(p, labels) for p in prediction.aux)


register_architecture("dminet", DMINet, config_builder(DMINetConfig))
