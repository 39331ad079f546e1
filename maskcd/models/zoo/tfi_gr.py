"""TFI-GR, Temporal Feature Interaction and Guided Refinement (Li, Zhu, Wang, Li, Zhang, IEEE TGRS 2022, "Remote
sensing change detection via temporal feature interaction and guided refinement"), as UCD trains it (``TFI_GR``).

A weight-shared ResNet-18 (torchvision) encodes each date to levels 64@1/4, 128@1/8, 256@1/16 and 512@1/32. At each
level a Temporal Feature Interaction Module (TFIM) fuses the pair: ``s = CBR3×3(|x1 − x2|)``, each date enhanced as
``CBR3×3(x ⊙ s + x)``, the two concatenated and fused by CBR3×3 (2C → C), and ``CBR1×1(s + fused)`` reduces to 64
channels (CBR = conv with bias → BN → ReLU). Two rounds of change-information extraction and guided refinement
follow. The extraction module (CIEM) upsamples the four maps to 1/4 (bilinear, align_corners), concatenates them
(256), applies channel attention (avg- and max-pooled, shared bias-free MLP 256 → 16 → 256, sigmoid), reduces to 64
(3×3 conv without bias → BN → ReLU) and pools the result back to 1/8, 1/16, 1/32 (average pooling 2/4/8, each followed
by a bias-free 3×3 conv). The refinement module (GRM) adds these guides to the level maps and applies one CBR3×3 per
level. The decoder walks coarse to fine, ``d = conv_sum1(d_fine + up(d_coarse))`` — **one ``conv_sum1`` (CBR3×3) is
applied at all three steps**, as in the authors' code — and a bias-free 1×1 conv gives 2 class logits at 1/4,
bilinearly upsampled (align_corners) to the input size.

The released code also builds ``conv_sum2``/``conv_sum3`` and keeps ResNet-18's ``fc``; none of them is ever called,
but UCD counts them (27.06 M in 2^20 units) and stores them in its checkpoints. maskcd keeps them, frozen
(``requires_grad=False``); ``keep_unused_layers: false`` drops them.

UCD trains it with cross-entropy on the logits, no input normalisation and no augmentation (the authors used a
sigmoid output with BCE + Dice); cross-entropy is the default here. UCD starts from ImageNet weights:
``backbone_weights: imagenet`` loads torchvision's ResNet-18 ``IMAGENET1K_V1`` through torchvision's cache (see
:mod:`maskcd.models.zoo._pretrained`); the default is random initialisation (ResNet convs Kaiming-normal, fan-out).
Inputs are padded to a multiple of 32 (the extraction module pools the 1/4 map by 8).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18
from transformers import PreTrainedConfig

from maskcd.models.registry import register_architecture
from maskcd.models.zoo._common import ZooModel, ZooPrediction, ce_loss, config_builder
from maskcd.models.zoo._pretrained import check_backbone_weights, maybe_load_backbone


class TFIGRConfig(PreTrainedConfig):
    """TFI-GR hyper-parameters (defaults = UCD's ``TFI_GR``).

    Args:
        mid_dim: Channels of every level after the TFIMs (64).
        ca_ratio: Reduction of the CIEM channel attention (16).
        keep_unused_layers: Keep the never-called ResNet ``fc`` and decoder ``conv_sum2``/``conv_sum3`` (frozen).
        backbone_weights: ``null`` (random init) or ``imagenet`` (torchvision ResNet-18 IMAGENET1K_V1, as UCD).
    """

    model_type = "maskcd-tfi-gr"

    def __init__(self, mid_dim: int = 64, ca_ratio: int = 16, keep_unused_layers: bool = True,
                 backbone_weights: str | None = None, **kwargs):
        self.mid_dim = mid_dim
        self.ca_ratio = ca_ratio
        self.keep_unused_layers = keep_unused_layers
        self.backbone_weights = check_backbone_weights(backbone_weights, "resnet18")
        super().__init__(**kwargs)


def cbr(cin: int, cout: int, k: int = 3, bias: bool = True) -> nn.Sequential:
    """Conv (``k``×``k``, same padding) → BatchNorm → ReLU."""
    conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def up_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=True)


class TFIM(nn.Module):
    """Temporal feature interaction: difference-enhanced dates, fused, plus the difference, reduced to ``cout``."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv_sub = cbr(cin, cin)
        self.conv_diff_enh1 = cbr(cin, cin)
        self.conv_diff_enh2 = cbr(cin, cin)
        self.conv_cat = cbr(2 * cin, cin)
        self.conv_dr = cbr(cin, cout, k=1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        diff = self.conv_sub((a - b).abs())
        a = self.conv_diff_enh1(a * diff + a)
        b = self.conv_diff_enh2(b * diff + b)
        return self.conv_dr(diff + self.conv_cat(torch.cat([a, b], dim=1)))


class ChannelGate(nn.Module):
    """``sigmoid(MLP(avgpool x) + MLP(maxpool x))`` with a shared bias-free 1×1 MLP."""

    def __init__(self, channels: int, ratio: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // ratio, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // ratio, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        mx = self.fc2(F.relu(self.fc1(F.adaptive_max_pool2d(x, 1))))
        return torch.sigmoid(avg + mx)


class CIEM(nn.Module):
    """Change information extraction: all levels at 1/4, channel attention, reduce, pool back to each level."""

    def __init__(self, dim: int, ratio: int):
        super().__init__()
        self.ca = ChannelGate(4 * dim, ratio)
        self.conv_dr = cbr(4 * dim, dim, bias=False)
        for i, size in enumerate((2, 4, 8), start=1):
            self.add_module(f"conv_pool{i}", nn.Sequential(nn.AvgPool2d(size, stride=size),
                                                           nn.Conv2d(dim, dim, 3, padding=1, bias=False)))

    def forward(self, levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """``levels`` fine to coarse (1/4 .. 1/32); returns the guides in the same order."""
        fine = levels[0]
        x = torch.cat([up_to(levels[3], fine), up_to(levels[2], fine), up_to(levels[1], fine), fine], dim=1)
        x = self.conv_dr(x * self.ca(x))
        return [x, self.conv_pool1(x), self.conv_pool2(x), self.conv_pool3(x)]


class GRM(nn.Module):
    """Guided refinement: ``CBR3×3(guide + level)`` per level (fine to coarse: d2, d3, d4, d5)."""

    def __init__(self, dim: int):
        super().__init__()
        for name in ("conv_d5", "conv_d4", "conv_d3", "conv_d2"):
            self.add_module(name, cbr(dim, dim))

    def forward(self, levels: list[torch.Tensor], guides: list[torch.Tensor]) -> list[torch.Tensor]:
        convs = (self.conv_d2, self.conv_d3, self.conv_d4, self.conv_d5)
        return [conv(g + x) for conv, x, g in zip(convs, levels, guides)]


class TFIDecoder(nn.Module):
    """Coarse-to-fine sums through the one shared ``conv_sum1``; ``conv_sum2/3`` exist only in the published layout."""

    def __init__(self, dim: int, keep_unused: bool):
        super().__init__()
        self.conv_sum1 = cbr(dim, dim)
        if keep_unused:
            self.conv_sum2 = cbr(dim, dim)
            self.conv_sum3 = cbr(dim, dim)
        self.cls = nn.Conv2d(dim, 2, 1, bias=False)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        d = levels[3]
        for finer in (levels[2], levels[1], levels[0]):
            d = self.conv_sum1(finer + up_to(d, finer))
        return self.cls(d)


class TFIGR(ZooModel):
    """TFI-GR: shared ResNet-18, per-level TFIMs, two CIEM + GRM rounds, shared-conv decoder."""

    config_class = TFIGRConfig
    size_divisor = 32

    def __init__(self, config: TFIGRConfig):
        super().__init__(config)
        self.backbone = resnet18()
        if self.num_bands != 3:
            self.backbone.conv1 = nn.Conv2d(self.num_bands, 64, 7, stride=2, padding=3, bias=False)
        if not config.keep_unused_layers:
            self.backbone.fc = nn.Identity()
        dim = config.mid_dim
        for level, cin in zip((5, 4, 3, 2), (512, 256, 128, 64)):
            self.add_module(f"TFIM{level}", TFIM(cin, dim))
        self.CIEM1, self.GRM1 = CIEM(dim, config.ca_ratio), GRM(dim)
        self.CIEM2, self.GRM2 = CIEM(dim, config.ca_ratio), GRM(dim)
        self.decoder = TFIDecoder(dim, config.keep_unused_layers)
        self.post_init()
        keep = [] if self.num_bands == 3 else [r"conv1\."]  # a stem for other band counts stays random
        keep += [] if config.keep_unused_layers else [r"fc\."]
        keep = "|".join(keep)
        maybe_load_backbone(self.backbone, config.backbone_weights, "resnet18", keep=keep or None)
        self.freeze_unused()

    def frozen_modules(self) -> list[nn.Module]:
        if not self.config.keep_unused_layers:
            return []
        return [self.backbone.fc, self.decoder.conv_sum2, self.decoder.conv_sum3]

    def _init_extra(self, module: nn.Module) -> None:
        if module is self:  # torchvision's ResNet init, which the per-layer defaults replaced
            for m in self.backbone.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        r = self.backbone
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        c2 = r.layer1(x)
        c3 = r.layer2(c2)
        c4 = r.layer3(c3)
        return [c2, c3, c4, r.layer4(c4)]

    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor) -> ZooPrediction:
        fa, fb = self._levels(image_a), self._levels(image_b)
        tfims = (self.TFIM2, self.TFIM3, self.TFIM4, self.TFIM5)
        levels = [m(a, b) for m, a, b in zip(tfims, fa, fb)]
        levels = self.GRM1(levels, self.CIEM1(levels))
        levels = self.GRM2(levels, self.CIEM2(levels))
        logits = self.decoder(levels)
        return ZooPrediction(F.interpolate(logits, size=image_a.shape[-2:], mode="bilinear", align_corners=True))

    def compute_loss(self, prediction: ZooPrediction, labels: torch.Tensor) -> torch.Tensor:
        return ce_loss(prediction.logits, labels)


register_architecture("tfi-gr", TFIGR, config_builder(TFIGRConfig))
