"""BIT, the Bitemporal Image Transformer (Chen, Qi, Shi, IEEE TGRS 2021, "Remote sensing image change detection
with transformers").

Per date, a ResNet-18 (torchvision; ``layer3`` at stride 1 instead of 2 and **not** dilated, ``layer4`` dropped, as the
authors' ``resnet_stages_num = 4``) gives 1/8-resolution features, upsampled ×2 (nearest) and projected to 32 channels (3×3
conv). A semantic tokenizer (1×1 conv → spatial softmax) pools each date into ``token_len`` tokens; the ``2 ×
token_len`` tokens plus a learned position embedding go through a transformer encoder (pre-norm; 8 heads ×
``dim_head`` 64; MLP 2 × 32, GELU); each date's pixels then query its refined tokens in a transformer decoder
(``dec_depth`` layers, 8 heads × ``decoder_dim_head``). The absolute feature difference is upsampled ×4 (bilinear) and
classified by two 3×3 convs (32 → 32 → BN → ReLU → 2). As in the authors' code, attention scales by ``dim ** -0.5``.

UCD's BIT (11.39 M in 2^20 units: token_len 4, enc_depth 1, dec_depth 8) matches the authors'
``base_transformer_pos_s4_dd8_dedim8`` (decoder_dim_head 8) **counting the torchvision ResNet-18's unused**
``layer4`` and ``fc``, which the released code instantiates (and stores in checkpoints) but never calls. maskcd keeps
them, frozen (``requires_grad=False``), so that the parameter count and state-dict layout match; set
``keep_unused_resnet_layers: false`` to drop them (3.04 M parameters).

Loss: cross-entropy, as in the paper. The ImageNet-pretrained ResNet-18 cannot be downloaded here: random weights.
Inputs are padded to a multiple of 8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet
from transformers import PreTrainedConfig

from maskcd.models.registry import register_architecture
from maskcd.models.zoo._common import ZooModel, ZooPrediction, ce_loss, config_builder


class BITConfig(PreTrainedConfig):
    """BIT hyper-parameters (defaults = UCD's BIT).

    Args:
        token_len: Semantic tokens per date (4).
        enc_depth: Transformer encoder layers (1).
        dec_depth: Transformer decoder layers (8).
        dim_head: Encoder head width (64).
        decoder_dim_head: Decoder head width (8 in ``..._dd8_dedim8``).
        num_heads: Attention heads (8).
        keep_unused_resnet_layers: Keep ResNet-18's never-called ``layer4``/``fc`` (frozen) as the released code does.
    """

    model_type = "maskcd-bit"

    def __init__(self, token_len: int = 4, enc_depth: int = 1, dec_depth: int = 8, dim_head: int = 64,
                 decoder_dim_head: int = 8, num_heads: int = 8, keep_unused_resnet_layers: bool = True, **kwargs):
        self.token_len = token_len
        self.enc_depth = enc_depth
        self.dec_depth = dec_depth
        self.dim_head = dim_head
        self.decoder_dim_head = decoder_dim_head
        self.num_heads = num_heads
        self.keep_unused_resnet_layers = keep_unused_resnet_layers
        super().__init__(**kwargs)


class UndilatedBasicBlock(BasicBlock):
    """torchvision's ResNet basic block that accepts a dilation request and ignores it.

    BIT asks its ResNet-18 for ``replace_stride_with_dilation=[False, True, True]``, but the basic block of its
    ``resnet.py`` resets any dilation to 1: ``layer3``/``layer4`` lose their stride and keep plain 3×3 convolutions.
    (Dilating them instead changes UCD BIT's logits by up to 0.15 with its published weights.)
    """

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 norm_layer=None):
        super().__init__(inplanes, planes, stride, downsample, groups, base_width, 1, norm_layer)


def resnet18_stride8(in_channels: int = 3) -> ResNet:
    """ResNet-18 whose ``layer3``/``layer4`` keep stride 1, undilated (random weights: nothing is downloaded)."""
    net = ResNet(UndilatedBasicBlock, [2, 2, 2, 2], replace_stride_with_dilation=[False, True, True])
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    return net


class Attention(nn.Module):
    """Multi-head (cross-)attention with BIT's ``dim ** -0.5`` scaling; ``context=None`` is self-attention."""

    def __init__(self, dim: int, heads: int, dim_head: int, cross: bool):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim**-0.5
        self.cross = cross
        if cross:
            self.to_q = nn.Linear(dim, inner, bias=False)
            self.to_k = nn.Linear(dim, inner, bias=False)
            self.to_v = nn.Linear(dim, inner, bias=False)
        else:
            self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.cross:
            q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        else:
            q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        b, n, _ = q.shape
        q, k, v = (t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        attn = (q @ k.transpose(-1, -2) * self.scale).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dim_head, cross=False)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ff(self.norm2(x))


class DecoderLayer(nn.Module):
    """Pixels (queries) attend to tokens (keys/values); one LayerNorm normalises both, as in BIT's ``PreNorm2``."""

    def __init__(self, dim: int, heads: int, dim_head: int, mlp_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dim_head, cross=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, mlp_dim)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), self.norm1(tokens))
        return x + self.ff(self.norm2(x))


class BIT(ZooModel):
    """BIT: ResNet-18 (S4) + semantic tokens + transformer encoder/decoder + difference head."""

    config_class = BITConfig
    size_divisor = 8

    def __init__(self, config: BITConfig):
        super().__init__(config)
        dim = 32
        self.resnet = resnet18_stride8(self.num_bands)
        if not config.keep_unused_resnet_layers:
            self.resnet.layer4 = nn.Identity()
            self.resnet.fc = nn.Identity()
        self.conv_pred = nn.Conv2d(256, dim, 3, padding=1)
        self.conv_a = nn.Conv2d(dim, config.token_len, 1, bias=False)
        self.pos_embedding = nn.Parameter(torch.randn(1, 2 * config.token_len, dim))
        self.encoder = nn.ModuleList(
            EncoderLayer(dim, config.num_heads, config.dim_head, 2 * dim) for _ in range(config.enc_depth)
        )
        self.decoder = nn.ModuleList(
            DecoderLayer(dim, config.num_heads, config.decoder_dim_head, 2 * dim) for _ in range(config.dec_depth)
        )
        self.classifier = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True),
            nn.Conv2d(dim, 2, 3, padding=1),
        )
        self.post_init()
        self.freeze_unused()

    def frozen_modules(self) -> list[nn.Module]:
        return [self.resnet.layer4, self.resnet.fc] if self.config.keep_unused_resnet_layers else []

    def _init_extra(self, module: nn.Module) -> None:
        if module is self:
            nn.init.normal_(self.pos_embedding)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        r = self.resnet
        x = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        x = r.layer3(r.layer2(r.layer1(x)))  # 1/8 (layer3 at stride 1)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv_pred(x)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        attn = self.conv_a(x).reshape(b, -1, h * w).softmax(dim=-1)
        return torch.einsum("bln,bcn->blc", attn, x.reshape(b, c, h * w))

    def _decode(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = x.flatten(2).transpose(1, 2)
        for layer in self.decoder:
            q = layer(q, tokens)
        return q.transpose(1, 2).reshape(b, c, h, w)

    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor) -> ZooPrediction:
        fa, fb = self._features(image_a), self._features(image_b)
        tokens = torch.cat([self._tokens(fa), self._tokens(fb)], dim=1) + self.pos_embedding
        for layer in self.encoder:
            tokens = layer(tokens)
        ta, tb = tokens.chunk(2, dim=1)
        diff = (self._decode(fa, ta) - self._decode(fb, tb)).abs()
        diff = F.interpolate(diff, scale_factor=4, mode="bilinear", align_corners=False)
        return ZooPrediction(self.classifier(diff))

    def compute_loss(self, prediction: ZooPrediction, labels: torch.Tensor) -> torch.Tensor:
        return ce_loss(prediction.logits, labels)


register_architecture("bit", BIT, config_builder(BITConfig))
