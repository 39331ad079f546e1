"""DSIFN, the deeply supervised image fusion network (Zhang, Yue, Lin, Zhao, Wang, Li, Chen, ISPRS J. 2020, "A deeply
supervised image fusion network for change detection in high resolution bi-temporal remote sensing images").

Two VGG16 feature extractors with *separate* weights (``t1_base``, ``t2_base``: the first 30 layers of VGG16, no BN)
give ReLU outputs at strides 1, 2, 4, 8 and 16 (64, 128, 256, 512, 512 channels). The difference discrimination
network starts from the concatenated stride-16 pair and goes coarse to fine: at every level, convs (3×3 conv → PReLU →
BN → Dropout 0.6), a CBAM-style spatial attention (channel mean and max → 7×7 conv → sigmoid, multiplied in) and BN;
then a 2×2 transposed conv up, concatenation with both dates' features of the next level and a channel attention
(shared MLP on average- and max-pooled features, ratio 8). The finest level ends in a 1×1 conv and a sigmoid.

The released code also predicts a sigmoid map at each coarser level (deep supervision in the paper, with BCE + Dice on
all five). UCD keeps only the finest map as ``main_predictions`` and trains BCE on it, so those four 1×1 heads never
change the prediction; maskcd does not run them and keeps them frozen, with the never-called first channel attention
(``ca1``) and BatchNorms (``bn_ca1``, ``bn_ca2``), for the published layout (UCD checkpoints load as they are; UCD's
48.36 M in 2^20 units counts them all).

Loss: binary cross-entropy on the sigmoid output (UCD), 255 ignored. Inputs are padded to a multiple of 16. Encoders:
random init (torchvision's VGG init); ``backbone_weights: imagenet`` loads torchvision's VGG16 (IMAGENET1K_V1, the
weights UCD starts from) into both.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedConfig

from maskcd.models.registry import register_architecture
from maskcd.models.zoo._common import ZooModel, ZooPrediction, bce_loss, config_builder
from maskcd.models.zoo._pretrained import check_backbone_weights, load_matching, torchvision_state_dict

VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
TAPS = (3, 8, 15, 22, 29)  # indices of the ReLU outputs used (strides 1, 2, 4, 8, 16)


class DSIFNConfig(PreTrainedConfig):
    """DSIFN hyper-parameters.

    Args:
        backbone_weights: ``null`` (random init, default) or ``"imagenet"`` (torchvision VGG16 into both encoders).
    """

    model_type = "maskcd-dsifn"

    def __init__(self, backbone_weights: str | None = None, **kwargs):
        self.backbone_weights = check_backbone_weights(backbone_weights, "vgg16")
        super().__init__(**kwargs)


class VGG16Taps(nn.Module):
    """VGG16 ``features[:30]`` (torchvision indexing) returning the five tapped ReLU outputs."""

    def __init__(self, in_ch: int):
        super().__init__()
        layers: list[nn.Module] = []
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_ch, item, 3, padding=1), nn.ReLU(inplace=True)]
                in_ch = item
        self.features = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                taps.append(x)
        return taps


class ChannelAttention(nn.Module):
    """``sigmoid(mlp(avgpool) + mlp(maxpool))`` with a shared bias-free 1×1 MLP (ratio 8)."""

    def __init__(self, channels: int, ratio: int = 8):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // ratio, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // ratio, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def mlp(v):
            return self.fc2(torch.relu(self.fc1(v)))

        return torch.sigmoid(mlp(x.mean(dim=(2, 3), keepdim=True)) + mlp(x.amax(dim=(2, 3), keepdim=True)))


class SpatialAttention(nn.Module):
    """``sigmoid(conv7x7([mean_c, max_c]))``."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv1(pooled))


def conv_prelu_bn(cin: int, cout: int) -> nn.Sequential:
    """3×3 conv → PReLU → BatchNorm → Dropout(0.6), the released block order."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.PReLU(), nn.BatchNorm2d(cout), nn.Dropout(0.6))


# (input channels, conv widths) of levels 1 (stride 16) ... 5 (stride 1)
LEVELS = ((1024, (512, 512)), (1536, (512, 256, 256)), (768, (256, 128, 128)), (384, (128, 64, 64)),
          (192, (64, 32, 16)))


class DSIFN(ZooModel):
    """DSIFN: two VGG16 encoders, attention-guided coarse-to-fine fusion decoder, finest sigmoid map."""

    config_class = DSIFNConfig
    size_divisor = 16

    def __init__(self, config: DSIFNConfig):
        super().__init__(config)
        self.t1_base = VGG16Taps(self.num_bands)
        self.t2_base = VGG16Taps(self.num_bands)
        for level in range(1, 6):
            self.add_module(f"sa{level}", SpatialAttention())
        for level, (cin, widths) in enumerate(LEVELS, start=1):
            self.add_module(f"ca{level}", ChannelAttention(cin))
            if level <= 2:  # bn_ca1, bn_ca2: declared, never used in the released code
                self.add_module(f"bn_ca{level}", nn.BatchNorm2d(cin))
            for i, cout in enumerate(widths, start=1):
                self.add_module(f"o{level}_conv{i}", conv_prelu_bn(cin, cout))
                cin = cout
            self.add_module(f"bn_sa{level}", nn.BatchNorm2d(cin))
            self.add_module(f"o{level}_conv{len(widths) + 1}", nn.Conv2d(cin, 1, 1))
            if level < 5:
                self.add_module(f"trans_conv{level}", nn.ConvTranspose2d(cin, cin, 2, stride=2))
        for m in (*self.t1_base.modules(), *self.t2_base.modules()):
            m._maskcd_vgg_init = True
        self.post_init()
        self.freeze_unused()
        on_meta = self.o5_conv4.weight.device.type == "meta"  # from_pretrained: weights come from the file
        if config.backbone_weights == "imagenet" and not on_meta:
            state = torchvision_state_dict("imagenet", "vgg16")
            for base in (self.t1_base, self.t2_base):
                load_matching(base, state)

    def frozen_modules(self) -> list[nn.Module]:
        return [self.ca1, self.bn_ca1, self.bn_ca2, self.o1_conv3, self.o2_conv4, self.o3_conv4, self.o4_conv4]

    def _init_extra(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d) and getattr(module, "_maskcd_vgg_init", False):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(module.bias)

    def _level(self, level: int, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, len(LEVELS[level - 1][1]) + 1):
            x = getattr(self, f"o{level}_conv{i}")(x)
        x = getattr(self, f"sa{level}")(x) * x
        return getattr(self, f"bn_sa{level}")(x)

    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor) -> ZooPrediction:
        ta, tb = self.t1_base(image_a), self.t2_base(image_b)
        x = self._level(1, torch.cat([ta[4], tb[4]], dim=1))
        for level, tap in zip(range(2, 6), (3, 2, 1, 0)):
            x = getattr(self, f"trans_conv{level - 1}")(x)
            x = torch.cat([x, ta[tap], tb[tap]], dim=1)
            x = self._level(level, getattr(self, f"ca{level}")(x) * x)
        return ZooPrediction(self.o5_conv4(x))

    def compute_loss(self, prediction: ZooPrediction, labels: torch.Tensor) -> torch.Tensor:
        return bce_loss(prediction.logits, labels)


register_architecture("dsifn", DSIFN, config_builder(DSIFNConfig))
