"""AERNet (Zhang, Zhang, Shi, Li, Wu, Wang, IEEE TGRS 2023, "AERNet: an attention-guided edge refinement network and
a dataset for remote sensing building change detection"), as UCD's registry builds it (``zh_net``).

A weight-shared ResNet-34 encodes each date (stem 64 @ 1/2, then 64, 128, 256, 512 @ 1/4 … 1/32). The concatenated
stride-32 pair passes a pooled self-attention block (BAM: 8×8 average pooling, query/key 1×1 convs to C/8, softmax
scaled by (C/8)^-½, values 1×1, nearest upsampling back, residual add) and a 1×1 conv-BN-ReLU + depthwise-separable
conv + 2×2 transposed conv. Four decoder blocks then each concatenate (date A, decoded, date B) features of one level:
1×1 conv-BN-ReLU, depthwise-separable conv (3×3 depthwise, 1×1 pointwise-BN-ReLU6), coordinate attention, a second
depthwise-separable conv, a residual add, a 2×2 transposed conv up. At full resolution an edge head and a segmentation
head (fed also the ×2-upsampled side logit of the last block) predict one logit each; the refinement replaces the
segmentation logit at predicted edges (``sigmoid(edge) > 0.5``, no gradient) by a softmax-weighted sum over its eight
neighbours (a 3×3 conv with eight output kernels, weighted by a 1×1 direction head).

UCD's ``main_predictions`` is that refined map as a raw logit, and UCD thresholds it at 0.5 (it lists AERNet among
its sigmoid models, but the network has no final sigmoid; UCD's BCE cannot train it: "AERNet outputs NAN"). maskcd
keeps the rule: the change probability is ``sigmoid(z - 0.5)``, so ``change_prob > 0.5`` is exactly UCD's map, and
training minimises binary cross-entropy on ``z - 0.5``. The edge head only gates the refinement (its output is
detached), the BAM ``gamma`` is never used and the side logits of the first three blocks feed nothing, so they never
receive a gradient: they are kept frozen for the published layout (UCD's 24.19 M in 2^20 units counts them). The
paper's edge supervision needs edge labels and is not implemented.

BAM pools the stride-32 map by 8×8 and upsamples back, so the released code only runs on multiples of 256 px; maskcd
pools with clipped border windows and upsamples to the map's own size, which is the same computation on multiples of
256 and also runs on other sizes (inputs are padded to a multiple of 32).
Encoder: random init (Kaiming-normal fan-out, as released); ``backbone_weights: imagenet`` loads torchvision's
ResNet-34 (IMAGENET1K_V1, the file UCD loads).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet34
from transformers import PreTrainedConfig

from maskcd.models.base import ChangeDetectionOutput
from maskcd.models.registry import register_architecture
from maskcd.models.zoo._common import ZooModel, ZooPrediction, bce_loss, config_builder
from maskcd.models.zoo._pretrained import check_backbone_weights, load_matching, torchvision_state_dict

UCD_THRESHOLD = 0.5  # UCD's one-channel rule, applied to AERNet's raw logit


class AERNetConfig(PreTrainedConfig):
    """AERNet hyper-parameters.

    Args:
        backbone_weights: ``null`` (random init, default) or ``"imagenet"`` (torchvision ResNet-34, 3 bands only).
    """

    model_type = "maskcd-aernet"

    def __init__(self, backbone_weights: str | None = None, **kwargs):
        self.backbone_weights = check_backbone_weights(backbone_weights, "resnet34")
        super().__init__(**kwargs)


class PooledSelfAttention(nn.Module):
    """BAM: self-attention on the ``ds``×``ds`` average-pooled map, upsampled (nearest) and added to the input."""

    def __init__(self, channels: int, ds: int = 8):
        super().__init__()
        self.ds = ds
        self.key_channels = channels // 8
        self.query_conv = nn.Conv2d(channels, channels // 8, 1)
        self.key_conv = nn.Conv2d(channels, channels // 8, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))  # declared, never used by the released forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ceil_mode and upsampling to the input's size: the released computation when the map is a multiple of ds,
        # clipped border windows otherwise (where the released code fails)
        pooled = F.avg_pool2d(x, self.ds, ceil_mode=True)
        b, c, h, w = pooled.shape
        q = self.query_conv(pooled).reshape(b, -1, h * w).transpose(1, 2)
        k = self.key_conv(pooled).reshape(b, -1, h * w)
        attn = (self.key_channels ** -0.5 * torch.bmm(q, k)).softmax(dim=-1)
        v = self.value_conv(pooled).reshape(b, -1, h * w)
        out = torch.bmm(v, attn.transpose(1, 2)).reshape(b, c, h, w)
        return F.interpolate(out, size=x.shape[-2:]) + x


class DWConv(nn.Module):
    """3×3 depthwise conv, then 1×1 conv → BN → ReLU6."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depth_conv = nn.Conv2d(cin, cin, 3, padding=1, groups=cin)
        self.point_conv = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.point_conv(self.depth_conv(x))


class CoordAtt(nn.Module):
    """Coordinate attention (Hou et al. 2021): pooled rows and columns → shared 1×1-BN-h-swish → two sigmoid gates."""

    def __init__(self, channels: int, reduction: int = 32):
        super().__init__()
        mid = max(8, channels // reduction)
        self.conv1 = nn.Conv2d(channels, mid, 1)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv_h = nn.Conv2d(mid, channels, 1)
        self.conv_w = nn.Conv2d(mid, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        rows = x.mean(dim=3, keepdim=True)
        cols = x.mean(dim=2, keepdim=True).transpose(2, 3)
        y = self.bn1(self.conv1(torch.cat([rows, cols], dim=2)))
        y = y * (F.relu6(y + 3) / 6)
        y_h, y_w = y.split([h, w], dim=2)
        gate_h = torch.sigmoid(self.conv_h(y_h))
        gate_w = torch.sigmoid(self.conv_w(y_w.transpose(2, 3)))
        return x * gate_w * gate_h


class DecoderBlock(nn.Module):
    """cat(A, decoded, B) → 1×1 conv-BN-ReLU → DWConv → CoordAtt → DWConv (+ residual) → side logit, 2× up."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.de_block1 = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout), nn.ReLU())
        self.de_block2 = DWConv(cout, cout)
        self.att = CoordAtt(cout)
        self.de_block3 = DWConv(cout, cout)
        self.de_block4 = nn.Conv2d(cout, 1, 1)
        self.de_block5 = nn.ConvTranspose2d(cout, cout, 2, stride=2)

    def features(self, a: torch.Tensor, decoded: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x0 = self.de_block1(torch.cat([a, decoded, b], dim=1))
        return self.de_block3(self.att(self.de_block2(x0))) + x0


def _head(cin: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 1, 1))


class EdgeRefinement(nn.Module):
    """Replace the logit at edge pixels by a direction-weighted sum of its eight neighbours (3×3 conv, 8 kernels)."""

    def __init__(self, channels: int = 32):
        super().__init__()
        self.dir_head = nn.Sequential(nn.Conv2d(channels, channels, 1), nn.BatchNorm2d(channels), nn.ReLU(),
                                      nn.Conv2d(channels, 8, 1))
        self.conv0 = nn.Conv2d(1, 8, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor, seg: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
        direction = self.dir_head(x).softmax(dim=1)
        at_edge = (torch.sigmoid(edge).detach() > 0.5).to(seg.dtype)
        neighbours = (self.conv0(seg) * direction).sum(dim=1, keepdim=True)
        return neighbours * at_edge + seg * (1 - at_edge)


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.bam = PooledSelfAttention(1024)
        self.db1 = nn.Sequential(nn.Conv2d(1024, 512, 1), nn.BatchNorm2d(512), nn.ReLU(), DWConv(512, 512),
                                 nn.ConvTranspose2d(512, 512, 2, stride=2))
        self.db2 = DecoderBlock(1024, 256)
        self.db3 = DecoderBlock(512, 128)
        self.db4 = DecoderBlock(256, 64)
        self.db5 = DecoderBlock(192, 32)
        self.classifier1 = _head(32)
        self.classifier2 = _head(33)
        self.refine = EdgeRefinement(32)

    def forward(self, fa: list[torch.Tensor], fb: list[torch.Tensor]) -> torch.Tensor:
        x = self.db1(self.bam(torch.cat([fa[4], fb[4]], dim=1)))
        for block, level in ((self.db2, 3), (self.db3, 2), (self.db4, 1)):
            x = block.de_block5(block.features(fa[level], x, fb[level]))
        x = self.db5.features(fa[0], x, fb[0])
        side = F.interpolate(self.db5.de_block4(x), scale_factor=2, mode="bilinear", align_corners=True)
        x = self.db5.de_block5(x)
        edge = self.classifier1(x)
        seg = self.classifier2(torch.cat([x, side], dim=1))
        return self.refine(x, seg, edge)


class AERNet(ZooModel):
    """AERNet (UCD ``zh_net``): shared ResNet-34, BAM + coordinate-attention decoder, edge-guided refinement."""

    config_class = AERNetConfig
    size_divisor = 32

    def __init__(self, config: AERNetConfig):
        super().__init__(config)
        self.encoder = resnet34(weights=None)
        self.encoder.fc = nn.Identity()  # classifier not part of the network
        if self.num_bands != 3:
            self.encoder.conv1 = nn.Conv2d(self.num_bands, 64, 7, stride=2, padding=3, bias=False)
        self.decoder = Decoder()
        for m in self.encoder.modules():
            m._maskcd_fan_out = True
        self.post_init()
        self.freeze_unused()
        on_meta = self.encoder.conv1.weight.device.type == "meta"  # from_pretrained: weights come from the file
        if config.backbone_weights == "imagenet" and self.num_bands == 3 and not on_meta:
            load_matching(self.encoder, torchvision_state_dict("imagenet", "resnet34"))

    def frozen_modules(self) -> list[nn.Module]:
        d = self.decoder
        return [d.classifier1, d.db2.de_block4, d.db3.de_block4, d.db4.de_block4]

    def freeze_unused(self) -> None:
        super().freeze_unused()
        self.decoder.bam.gamma.requires_grad_(False)

    def _init_extra(self, module: nn.Module) -> None:
        # the released inits: encoder convs normal(0, sqrt(2 / (k*k*out))); decoder Conv2d Kaiming-normal (fan-in)
        if isinstance(module, nn.Conv2d):
            if getattr(module, "_maskcd_fan_out", False):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.kaiming_normal_(module.weight)
        elif isinstance(module, PooledSelfAttention):
            nn.init.zeros_(module.gamma)

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        e = self.encoder
        x = e.relu(e.bn1(e.conv1(x)))
        out = [x]
        x = e.maxpool(x)
        for layer in (e.layer1, e.layer2, e.layer3, e.layer4):
            x = layer(x)
            out.append(x)
        return out

    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor) -> ZooPrediction:
        """``logits``: UCD's ``main_predictions``, the raw refined logit (change where it exceeds 0.5)."""
        return ZooPrediction(self.decoder(self._encode(image_a), self._encode(image_b)))

    def forward(self, image_a: torch.Tensor, image_b: torch.Tensor, labels: torch.Tensor | None = None,
                **kwargs) -> ChangeDetectionOutput:
        out = super().forward(image_a, image_b, labels, **kwargs)
        logits = torch.cat([out.logits[:, :1], out.logits[:, 1:] - UCD_THRESHOLD], dim=1)
        return ChangeDetectionOutput(loss=out.loss, change_prob=self.prob_from_logits(logits), logits=logits)

    def compute_loss(self, prediction: ZooPrediction, labels: torch.Tensor) -> torch.Tensor:
        return bce_loss(prediction.logits - UCD_THRESHOLD, labels)


register_architecture("aernet", AERNet, config_builder(AERNetConfig))
