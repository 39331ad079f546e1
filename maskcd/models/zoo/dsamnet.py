"""DSAMNet (Shi, Liu, Li, Zhang, Li, IEEE TGRS 2022, "A deeply supervised attention metric-based network and an
open aerial image dataset for remote sensing change detection").

A weight-shared ResNet-18 variant encodes each date: a 7×7 stride-1 stem, max-pooling, then ``layer1`` (64 @ 1/2),
``layer2`` (128 @ 1/4), ``layer3`` (256 @ 1/8) and a three-block multi-grid ``layer4`` (512, dilations 2/4/8, still
1/8). In the released code a shared decoder (four 1×1 reductions to 96 channels, upsampled to 1/2, 3×3 + 1×1 fusion to
64) and one CBAM per date produce a metric-learning distance map, and two deep-supervision heads (transposed convs on
the absolute feature differences) predict change logits from ``layer1`` and ``layer2``.

UCD's ``main_predictions`` is the ``layer2`` head (``ds_lyr3``: 3×3 stride-4 transposed conv 128 → 32, BN, ReLU,
Dropout2d 0.2, 3×3 transposed conv to 2 classes, full resolution), and UCD trains with cross-entropy on it alone, so
``layer3``, ``layer4``, the decoder, both CBAMs and the ``layer1`` head never receive a gradient there and never change
the prediction. maskcd runs only the path to the main output and keeps those modules, frozen, for the published
layout (UCD checkpoints load as they are; UCD's 16.17 M in 2^20 units counts them). The paper's batch-contrastive loss
on the distance map plus Dice deep supervision is not UCD's recipe and is not implemented.

Loss: cross-entropy (UCD), 255 ignored. Inputs are padded to a multiple of 4. Backbone: random init (the convs
Kaiming-normal fan-out, as released); ``backbone_weights: imagenet`` loads torchvision's ResNet-18 (IMAGENET1K_V1, the
file UCD loads) into the matching tensors (not the third ``layer4`` block), for 3-band inputs as in UCD.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedConfig

from maskcd.models.registry import register_architecture
from maskcd.models.zoo._common import ZooModel, ZooPrediction, ce_loss, config_builder
from maskcd.models.zoo._pretrained import check_backbone_weights, load_matching, torchvision_state_dict


class DSAMNetConfig(PreTrainedConfig):
    """DSAMNet hyper-parameters.

    Args:
        backbone_weights: ``null`` (random init, default) or ``"imagenet"`` (torchvision ResNet-18, 3 bands only).
    """

    model_type = "maskcd-dsamnet"

    def __init__(self, backbone_weights: str | None = None, **kwargs):
        self.backbone_weights = check_backbone_weights(backbone_weights, "resnet18")
        super().__init__(**kwargs)


class BasicBlock(nn.Module):
    """ResNet basic block; the first 3×3 conv carries the stride and dilation, the second is plain."""

    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class DilatedResNet18(nn.Module):
    """Output stride 8 at ``layer3``/``layer4``: strides 1, 2, 2, 1; ``layer4`` = three blocks of dilation 2, 4, 8."""

    def __init__(self, in_ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, 64, 7, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, stride=2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, stride=2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(*(BasicBlock(256 if d == 2 else 512, 512, dilation=d) for d in (2, 4, 8)))

    def forward_to_layer2(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer2(self.layer1(x))


class Reduction(nn.Module):
    """1×1 conv (no bias) → BN → ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()


class Decoder(nn.Module):
    """The released metric-learning decoder (kept for the layout; not on the UCD prediction path)."""

    def __init__(self, out_ch: int = 64):
        super().__init__()
        self.dr2, self.dr3, self.dr4, self.dr5 = (Reduction(c, 96) for c in (64, 128, 256, 512))
        self.last_conv = nn.Sequential(
            nn.Conv2d(384, 256, 3, padding=1, bias=False), nn.BatchNorm2d(256), nn.ReLU(), nn.Dropout(0.5),
            nn.Conv2d(256, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(),
        )


class ChannelAttention(nn.Module):
    def __init__(self, channels: int, ratio: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // ratio, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // ratio, channels, 1, bias=False)


class SpatialAttention(nn.Module):
    def __init__(self, kernel: int):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)


class CBAM(nn.Module):
    """CBAM parameters (channel MLP, 7×7 spatial conv), kept for the layout."""

    def __init__(self, channels: int, ratio: int = 8, kernel: int = 7):
        super().__init__()
        self.ca = ChannelAttention(channels, ratio)
        self.sa = SpatialAttention(kernel)


class DeepSupervisionHead(nn.Module):
    """3×3 transposed conv (stride ``stride``) → BN → ReLU → Dropout2d(0.2) → 3×3 transposed conv to the classes."""

    def __init__(self, cin: int, cmid: int, stride: int, output_padding: int, num_classes: int = 2):
        super().__init__()
        self.dsconv = nn.ConvTranspose2d(cin, cmid, 3, padding=1, stride=stride, output_padding=output_padding)
        self.bn = nn.BatchNorm2d(cmid)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout2d(0.2)
        self.outconv = nn.ConvTranspose2d(cmid, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outconv(self.dropout(self.relu(self.bn(self.dsconv(x)))))


class DSAMNet(ZooModel):
    """DSAMNet as UCD runs it: shared dilated ResNet-18, |layer2 difference| → deep-supervision head (main output)."""

    config_class = DSAMNetConfig
    size_divisor = 4

    def __init__(self, config: DSAMNetConfig):
        super().__init__(config)
        self.backbone = DilatedResNet18(self.num_bands)
        self.decoder = Decoder(64)
        self.cbam0 = CBAM(64)
        self.cbam1 = CBAM(64)
        self.ds_lyr2 = DeepSupervisionHead(64, 32, 2, 1)
        self.ds_lyr3 = DeepSupervisionHead(128, 32, 4, 3)
        for m in self.backbone.modules():  # the released inits: fan-out normal (backbone), fan-in normal (decoder)
            m._maskcd_fan_out = True
        for m in self.decoder.modules():
            m._maskcd_fan_in = True
        self.post_init()
        self.freeze_unused()
        on_meta = self.backbone.conv1.weight.device.type == "meta"  # from_pretrained: weights come from the file
        if config.backbone_weights == "imagenet" and self.num_bands == 3 and not on_meta:
            load_matching(self.backbone, torchvision_state_dict("imagenet", "resnet18"))

    def frozen_modules(self) -> list[nn.Module]:
        b = self.backbone
        return [b.layer3, b.layer4, self.decoder, self.cbam0, self.cbam1, self.ds_lyr2]

    def _init_extra(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d) and getattr(module, "_maskcd_fan_out", False):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Conv2d) and getattr(module, "_maskcd_fan_in", False):
            nn.init.kaiming_normal_(module.weight)

    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor) -> ZooPrediction:
        fa = self.backbone.forward_to_layer2(image_a)
        fb = self.backbone.forward_to_layer2(image_b)
        return ZooPrediction(self.ds_lyr3((fa - fb).abs()))

    def compute_loss(self, prediction: ZooPrediction, labels: torch.Tensor) -> torch.Tensor:
        return ce_loss(prediction.logits, labels)


register_architecture("dsamnet", DSAMNet, config_builder(DSAMNetConfig))
