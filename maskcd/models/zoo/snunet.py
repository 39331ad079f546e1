"""SNUNet-CD (Fang, Li, Shi, Jiang, IEEE GRSL 2021, "SNUNet-CD: A densely connected Siamese network for change
detection of VHR images").

A weight-shared 5-level encoder (``base_width`` × 1, 2, 4, 8, 16 channels; each node a residual
``conv3×3 → BN → ReLU → conv3×3 → BN`` block with the first conv's output as the identity) runs on both dates; a
UNet++-style nested decoder densely connects both dates' encoder nodes at each level with the upsampled deeper node
(2×2 stride-2 transposed convolutions). The four full-resolution outputs ``X0,1..X0,4`` are fused by the Ensemble
Channel Attention Module (ECAM): channel attention (two pooled branches, both average-pooled in the released code,
see ``ca_max_pool``; shared 1×1 MLP, ratio 16) on their concatenation,
applied to ``concat + repeat(CA_intra(Σ X0,j))``, then a 1×1 classifier to 2 classes. As in the authors' code the
deepest node is only computed for the after image (the before image's ``X4,0`` is never used).

Loss (``recipe``): ``"ucd"`` (default) plain cross-entropy, as UCD's config trains it; ``"authors"`` the paper's hybrid
loss, weighted cross-entropy (focal with γ = 0 and no class weights in the released code, i.e. plain CE) + multi-class
soft dice. 255 ignored. Inputs are padded to a multiple of 16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig

from maskcd.errors import ConfigError
from maskcd.models.registry import register_architecture
from maskcd.models.zoo._common import ZooModel, ZooPrediction, ce_loss, config_builder, dice_loss


class SNUNetConfig(PreTrainedConfig):
    """SNUNet-CD hyper-parameters.

    Args:
        base_width: Channels of the first level (32 → the paper's 12.0 M-parameter "SNUNet-CD/32").
        ca_ratio: Reduction ratio of the ECAM channel attention (16).
        ca_max_pool: Use max pooling in the channel attention's second branch, as the paper describes. Default
            ``False``: the released code (and UCD, whose checkpoints were trained with it) pools that branch with an
            ``AdaptiveAvgPool2d`` too, so both branches see the average.
        recipe: ``"ucd"`` (default: cross-entropy, as UCD) or ``"authors"`` (cross-entropy + soft dice).
    """

    model_type = "maskcd-snunet"

    def __init__(self, base_width: int = 32, ca_ratio: int = 16, ca_max_pool: bool = False, recipe: str = "ucd",
                 **kwargs):
        if recipe not in ("ucd", "authors"):
            raise ConfigError(f"SNUNet recipe must be 'ucd' or 'authors', got {recipe!r}")
        self.recipe = recipe
        self.base_width = base_width
        self.ca_ratio = ca_ratio
        self.ca_max_pool = ca_max_pool
        super().__init__(**kwargs)


class NestedBlock(nn.Module):
    """Residual node: ``relu(bn2(conv2(relu(bn1(c1)))) + c1)`` with ``c1 = conv1(x)``."""

    def __init__(self, cin: int, cmid: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cmid, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(cmid)
        self.conv2 = nn.Conv2d(cmid, cout, 3, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        identity = x
        x = self.conv2(F.relu(self.bn1(x)))
        return F.relu(self.bn2(x) + identity)


class ChannelAttention(nn.Module):
    """``sigmoid(MLP(avgpool(x)) + MLP(pool2(x)))`` with a shared bias-free 1×1 MLP; ``pool2`` is max pooling when
    ``max_pool`` (the paper), else average pooling (the released code)."""

    def __init__(self, channels: int, ratio: float, max_pool: bool = False):
        super().__init__()
        self.max_pool = max_pool
        hidden = max(1, int(channels // ratio))
        self.fc1 = nn.Conv2d(channels, hidden, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        pooled = F.adaptive_max_pool2d(x, 1) if self.max_pool else F.adaptive_avg_pool2d(x, 1)
        mx = self.fc2(F.relu(self.fc1(pooled)))
        return torch.sigmoid(avg + mx)


class SNUNet(ZooModel):
    """SNUNet-CD with ECAM."""

    config_class = SNUNetConfig
    size_divisor = 16

    def __init__(self, config: SNUNetConfig):
        super().__init__(config)
        n = config.base_width
        f = [n, n * 2, n * 4, n * 8, n * 16]
        self.conv0_0 = NestedBlock(self.num_bands, f[0], f[0])
        self.conv1_0 = NestedBlock(f[0], f[1], f[1])
        self.conv2_0 = NestedBlock(f[1], f[2], f[2])
        self.conv3_0 = NestedBlock(f[2], f[3], f[3])
        self.conv4_0 = NestedBlock(f[3], f[4], f[4])
        self.up1_0, self.up2_0, self.up3_0, self.up4_0 = (nn.ConvTranspose2d(c, c, 2, stride=2) for c in f[1:])
        self.conv0_1 = NestedBlock(f[0] * 2 + f[1], f[0], f[0])
        self.conv1_1 = NestedBlock(f[1] * 2 + f[2], f[1], f[1])
        self.up1_1 = nn.ConvTranspose2d(f[1], f[1], 2, stride=2)
        self.conv2_1 = NestedBlock(f[2] * 2 + f[3], f[2], f[2])
        self.up2_1 = nn.ConvTranspose2d(f[2], f[2], 2, stride=2)
        self.conv3_1 = NestedBlock(f[3] * 2 + f[4], f[3], f[3])
        self.up3_1 = nn.ConvTranspose2d(f[3], f[3], 2, stride=2)
        self.conv0_2 = NestedBlock(f[0] * 3 + f[1], f[0], f[0])
        self.conv1_2 = NestedBlock(f[1] * 3 + f[2], f[1], f[1])
        self.up1_2 = nn.ConvTranspose2d(f[1], f[1], 2, stride=2)
        self.conv2_2 = NestedBlock(f[2] * 3 + f[3], f[2], f[2])
        self.up2_2 = nn.ConvTranspose2d(f[2], f[2], 2, stride=2)
        self.conv0_3 = NestedBlock(f[0] * 4 + f[1], f[0], f[0])
        self.conv1_3 = NestedBlock(f[1] * 4 + f[2], f[1], f[1])
        self.up1_3 = nn.ConvTranspose2d(f[1], f[1], 2, stride=2)
        self.conv0_4 = NestedBlock(f[0] * 5 + f[1], f[0], f[0])
        self.ca = ChannelAttention(f[0] * 4, ratio=config.ca_ratio, max_pool=config.ca_max_pool)
        self.ca1 = ChannelAttention(f[0], ratio=config.ca_ratio / 4, max_pool=config.ca_max_pool)
        self.conv_final = nn.Conv2d(f[0] * 4, 2, kernel_size=1)
        self.post_init()

    def _encode(self, x: torch.Tensor, deepest: bool) -> list[torch.Tensor]:
        x0 = self.conv0_0(x)
        x1 = self.conv1_0(F.max_pool2d(x0, 2))
        x2 = self.conv2_0(F.max_pool2d(x1, 2))
        x3 = self.conv3_0(F.max_pool2d(x2, 2))
        out = [x0, x1, x2, x3]
        if deepest:
            out.append(self.conv4_0(F.max_pool2d(x3, 2)))
        return out

    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor) -> ZooPrediction:
        a0, a1, a2, a3 = self._encode(image_a, deepest=False)
        b0, b1, b2, b3, b4 = self._encode(image_b, deepest=True)
        x0_1 = self.conv0_1(torch.cat([a0, b0, self.up1_0(b1)], 1))
        x1_1 = self.conv1_1(torch.cat([a1, b1, self.up2_0(b2)], 1))
        x0_2 = self.conv0_2(torch.cat([a0, b0, x0_1, self.up1_1(x1_1)], 1))
        x2_1 = self.conv2_1(torch.cat([a2, b2, self.up3_0(b3)], 1))
        x1_2 = self.conv1_2(torch.cat([a1, b1, x1_1, self.up2_1(x2_1)], 1))
        x0_3 = self.conv0_3(torch.cat([a0, b0, x0_1, x0_2, self.up1_2(x1_2)], 1))
        x3_1 = self.conv3_1(torch.cat([a3, b3, self.up4_0(b4)], 1))
        x2_2 = self.conv2_2(torch.cat([a2, b2, x2_1, self.up3_1(x3_1)], 1))
        x1_3 = self.conv1_3(torch.cat([a1, b1, x1_1, x1_2, self.up2_2(x2_2)], 1))
        x0_4 = self.conv0_4(torch.cat([a0, b0, x0_1, x0_2, x0_3, self.up1_3(x1_3)], 1))
        out = torch.cat([x0_1, x0_2, x0_3, x0_4], 1)
        intra = x0_1 + x0_2 + x0_3 + x0_4
        ca1 = self.ca1(intra)
        out = self.ca(out) * (out + ca1.repeat(1, 4, 1, 1))
        return ZooPrediction(self.conv_final(out))

    def compute_loss(self, prediction: ZooPrediction, labels: torch.Tensor) -> torch.Tensor:
        loss = ce_loss(prediction.logits, labels)
        return loss + dice_loss(prediction.logits, labels) if self.config.recipe == "authors" else loss


register_architecture("snunet", SNUNet, config_builder(SNUNetConfig))
