"""DTCDSCN, the Dual-Task Constrained Deep Siamese Convolutional Network ("CDNet34"; Liu, Pang, Wang, Chen, Shi,
IEEE GRSL 2020, "Building change detection for remote sensing images using a dual-task constrained deep Siamese
convolutional network model"), as UCD trains it (``DTCDSCN``).

A weight-shared SE-ResNet-34 encodes each date (7×7/2 stem → BN → ReLU → 3×3/2 max-pool, then 3/4/6/3 basic blocks of
64/128/256/512 channels, each with a squeeze-and-excitation gate, reduction 16, before the residual add), giving
``e1..e4`` at 1/4..1/32. The change branch works on *signed* differences ``T1 − T2``: a centre block on ``e4x − e4y``
(four cascaded 3×3 convs with dilations 1, 2, 4, 8, each followed by ReLU, summed with the input; zero biases), then
four decoder blocks (1×1 conv to C/4 → BN → ReLU; ``x + scSE(x)`` with concurrent channel and spatial squeeze and
excitation; 3×3 stride-2 transposed conv → BN → ReLU; 1×1 conv → BN → ReLU), each but the last adding the next finer
level's difference, and a head (4×4 stride-2 transposed conv 64 → 32 → ReLU → 3×3 conv → ReLU → 3×3 conv to 2 classes)
at full resolution. Convolutions (not transposed ones) are initialised N(0, √(2 / (k² · C_out))), as published.

**The semantic branch is built but never run.** The paper's dual-task design adds a per-date semantic decoder
(``dblock``, ``decoder1..4``, ``finaldeconv1``, ``finalconv2/3``) supervised by building masks. UCD builds it (its
9.8 M parameters are in UCD's 39.17 M, in 2^20 units, and in its checkpoints) but its forward pass never calls it.
maskcd keeps those modules, frozen (``requires_grad=False``), so that the parameter count and the state-dict layout
match; ``keep_semantic_branch: false`` drops them.

Loss: cross-entropy on the change logits, as UCD trains it (the authors' dual-task focal-like loss needs semantic
labels). No pretrained weights. Inputs are padded to a multiple of 32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock
from transformers import PreTrainedConfig

from maskcd.errors import ConfigError
from maskcd.models.registry import register_architecture
from maskcd.models.zoo._common import ZooModel, ZooPrediction, ce_loss, config_builder


class DTCDSCNConfig(PreTrainedConfig):
    """DTCDSCN hyper-parameters (defaults = UCD's ``CDNet34``).

    Args:
        layers: Basic blocks per encoder stage ([3, 4, 6, 3]: SE-ResNet-34).
        filters: Channels of the encoder stages, also the decoder's ([64, 128, 256, 512]).
        se_reduction: Reduction ratio of the SE and scSE gates (16).
        keep_semantic_branch: Keep the never-called semantic decoder (frozen), as UCD builds and stores it.
    """

    model_type = "maskcd-dtcdscn"

    def __init__(self, layers: list[int] | None = None, filters: list[int] | None = None, se_reduction: int = 16,
                 keep_semantic_branch: bool = True, **kwargs):
        self.layers = list(layers) if layers is not None else [3, 4, 6, 3]
        self.filters = list(filters) if filters is not None else [64, 128, 256, 512]
        if len(self.layers) != 4 or len(self.filters) != 4:
            raise ConfigError(f"DTCDSCN layers and filters must list 4 stages, got {self.layers}, {self.filters}")
        self.se_reduction = se_reduction
        self.keep_semantic_branch = keep_semantic_branch
        super().__init__(**kwargs)


class SEGate(nn.Module):
    """Squeeze-and-excitation: ``x · sigmoid(W2 relu(W1 gap(x)))`` with bias-free linear layers."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False), nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels, bias=False), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
        return x * gate[:, :, None, None]


class SEBlock(BasicBlock):
    """torchvision's ResNet basic block with an SE gate applied after ``bn2``, before the residual add."""

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, reduction: int):
        super().__init__(inplanes, planes, stride, downsample)
        self.se = SEGate(planes, reduction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


def se_stage(cin: int, cout: int, blocks: int, stride: int, reduction: int) -> nn.Sequential:
    down = None
    if stride != 1 or cin != cout:
        down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
    first = SEBlock(cin, cout, stride, down, reduction)
    return nn.Sequential(first, *(SEBlock(cout, cout, 1, None, reduction) for _ in range(blocks - 1)))


class DilatedCentre(nn.Module):
    """Cascaded 3×3 convs with dilations 1, 2, 4, 8 (ReLU after each), summed with the input."""

    def __init__(self, channels: int):
        super().__init__()
        for i, d in enumerate((1, 2, 4, 8), start=1):
            self.add_module(f"dilate{i}", nn.Conv2d(channels, channels, 3, padding=d, dilation=d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, y = x, x
        for conv in (self.dilate1, self.dilate2, self.dilate3, self.dilate4):
            y = F.relu(conv(y))
            out = out + y
        return out


class SCSE(nn.Module):
    """Concurrent spatial and channel squeeze & excitation: ``x · cSE(x) + x · sSE(x)``."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        hidden = channels // reduction
        self.channel_excitation = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1, bias=False), nn.Sigmoid(),
        )
        self.spatial_se = nn.Sequential(nn.Conv2d(channels, 1, 1, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel = x * self.channel_excitation(F.adaptive_avg_pool2d(x, 1))
        return channel + x * self.spatial_se(x)


class DTCDSCNDecoderBlock(nn.Module):
    """1×1 → BN → ReLU, ``+ scSE``, 3×3 stride-2 transposed conv → BN → ReLU, 1×1 → BN → ReLU (×2 resolution)."""

    def __init__(self, cin: int, cout: int, reduction: int):
        super().__init__()
        mid = cin // 4
        self.conv1 = nn.Conv2d(cin, mid, 1)
        self.norm1 = nn.BatchNorm2d(mid)
        self.scse = SCSE(mid, reduction)
        self.deconv2 = nn.ConvTranspose2d(mid, mid, 3, stride=2, padding=1, output_padding=1)
        self.norm2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1)
        self.norm3 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        x = x + self.scse(x)
        x = F.relu(self.norm2(self.deconv2(x)))
        return F.relu(self.norm3(self.conv3(x)))


class DTCDSCN(ZooModel):
    """DTCDSCN's change branch on a shared SE-ResNet-34 (the semantic branch is kept frozen, never called)."""

    config_class = DTCDSCNConfig
    size_divisor = 32

    def __init__(self, config: DTCDSCNConfig):
        super().__init__(config)
        r = config.se_reduction
        f = config.filters
        self.firstconv = nn.Conv2d(self.num_bands, f[0], 7, stride=2, padding=3, bias=False)
        self.firstbn = nn.BatchNorm2d(f[0])
        cin = f[0]
        for i, (cout, blocks) in enumerate(zip(f, config.layers), start=1):
            self.add_module(f"encoder{i}", se_stage(cin, cout, blocks, 1 if i == 1 else 2, r))
            cin = cout
        # semantic (dual-task) branch: built as published, never called
        semantic = ["dblock", "decoder4", "decoder3", "decoder2", "decoder1", "finaldeconv1", "finalconv2",
                    "finalconv3"]
        self._semantic = semantic if config.keep_semantic_branch else []
        for suffix, keep in (("", config.keep_semantic_branch), ("_master", True)):
            if not keep:
                continue
            self.add_module(f"dblock{suffix}", DilatedCentre(f[3]))
            self.add_module(f"decoder4{suffix}", DTCDSCNDecoderBlock(f[3], f[2], r))
            self.add_module(f"decoder3{suffix}", DTCDSCNDecoderBlock(f[2], f[1], r))
            self.add_module(f"decoder2{suffix}", DTCDSCNDecoderBlock(f[1], f[0], r))
            self.add_module(f"decoder1{suffix}", DTCDSCNDecoderBlock(f[0], f[0], r))
            self.add_module(f"finaldeconv1{suffix}", nn.ConvTranspose2d(f[0], 32, 4, stride=2, padding=1))
            self.add_module(f"finalconv2{suffix}", nn.Conv2d(32, 32, 3, padding=1))
            self.add_module(f"finalconv3{suffix}", nn.Conv2d(32, 2, 3, padding=1))
        self.post_init()
        self.freeze_unused()

    def frozen_modules(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self._semantic]

    def _init_extra(self, module: nn.Module) -> None:
        if type(module) is nn.Conv2d:  # not the transposed convs: they keep PyTorch's default
            k = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / k))
        elif isinstance(module, DilatedCentre):
            for conv in module.children():
                nn.init.zeros_(conv.bias)

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.max_pool2d(F.relu(self.firstbn(self.firstconv(x))), 3, stride=2, padding=1)
        feats = []
        for stage in (self.encoder1, self.encoder2, self.encoder3, self.encoder4):
            x = stage(x)
            feats.append(x)
        return feats

    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor) -> ZooPrediction:
        x1, x2, x3, x4 = self._encode(image_a)
        y1, y2, y3, y4 = self._encode(image_b)
        d = self.dblock_master(x4 - y4)
        d = self.decoder4_master(d) + x3 - y3
        d = self.decoder3_master(d) + x2 - y2
        d = self.decoder2_master(d) + x1 - y1
        d = self.decoder1_master(d)
        d = F.relu(self.finaldeconv1_master(d))
        d = F.relu(self.finalconv2_master(d))
        return ZooPrediction(self.finalconv3_master(d))

    def compute_loss(self, prediction: ZooPrediction, labels: torch.Tensor) -> torch.Tensor:
        return ce_loss(prediction.logits, labels)


register_architecture("dtcdscn", DTCDSCN, config_builder(DTCDSCNConfig))
