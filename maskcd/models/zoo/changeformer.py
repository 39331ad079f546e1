"""ChangeFormer V6 (Bandara & Patel, IGARSS 2022, "A transformer-based siamese network for change detection").

Encoder (shared by both dates): a hierarchical MiT/SegFormer-style transformer, 4 stages with widths
64-128-320-512, depths 3-3-4-3, heads 1-2-4-8, spatial-reduction ratios 8-4-2-1, Mix-FFN (MLP ratio 4 with a 3×3
depth-wise conv), overlapping patch embeddings (7×7 stride 4, then ``patch_size``×``patch_size`` stride 2; V6 passes
7), dropout / attention dropout / stochastic depth 0.1, LayerNorm ε 1e-6.

Decoder (``DecoderTransformer_v3``, ``embed_dim`` 256): per stage a linear projection of each date, a difference
module on their concatenation (3×3 conv → ReLU → BN → 3×3 conv → ReLU) plus the ×2-upsampled coarser difference, a
per-stage prediction head (deep supervision), fusion of the four upsampled differences (1×1 conv + BN), two ×2
transposed-conv upsamplings each followed by a residual block (scaled by 0.1), and a 3×3 classifier to 2 classes.

Loss (``recipe``): ``"ucd"`` (default) cross-entropy on the full-resolution output only, as UCD trains it (UCD's
ChangeFormerV6 returns only that output as ``main_predictions``); the four per-stage prediction heads are then kept
for the published layout, frozen and not computed. ``"authors"``: the authors' multi-scale training,
Σ_i w_i · CE(pred_i, labels nearest-resized to pred_i), weights ``multi_pred_weights`` = (0.5, 0.5, 0.5, 0.8, 1.0)
from coarsest to full resolution. 255 ignored. Inputs are padded to a
multiple of 32. No ImageNet-pretrained MiT weights (nothing is downloaded): the encoder uses the authors' init
(truncated normal 0.02 for linear layers, He fan-out normal for convs), the decoder PyTorch defaults.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth
from transformers import PreTrainedConfig

from maskcd.errors import ConfigError
from maskcd.models.registry import register_architecture
from maskcd.models.zoo._common import ZooModel, ZooPrediction, ce_loss, config_builder, resize_labels


class ChangeFormerConfig(PreTrainedConfig):
    """ChangeFormer V6 hyper-parameters (defaults = the published V6).

    Args:
        embed_dims: Encoder stage widths.
        depths: Transformer blocks per stage.
        num_heads: Attention heads per stage.
        sr_ratios: Key/value spatial-reduction ratio per stage.
        mlp_ratio: Mix-FFN expansion.
        patch_size: Kernel of the stride-2 patch embeddings of stages 2–4 (V6: 7).
        embed_dim: Decoder width (256).
        drop_rate: Dropout of projections / MLPs (0.1).
        attn_drop_rate: Attention dropout (0.1).
        drop_path_rate: Maximum stochastic depth, linearly increasing over blocks (0.1).
        multi_pred_weights: Loss weights of the 5 predictions, coarsest first (``recipe: authors``).
        recipe: ``"ucd"`` (default: CE on the final output, as UCD) or ``"authors"`` (multi-scale loss).
    """

    model_type = "maskcd-changeformer"

    def __init__(self, embed_dims=(64, 128, 320, 512), depths=(3, 3, 4, 3), num_heads=(1, 2, 4, 8),
                 sr_ratios=(8, 4, 2, 1), mlp_ratio: float = 4.0, patch_size: int = 7, embed_dim: int = 256,
                 drop_rate: float = 0.1, attn_drop_rate: float = 0.1, drop_path_rate: float = 0.1,
                 multi_pred_weights=(0.5, 0.5, 0.5, 0.8, 1.0), recipe: str = "ucd", **kwargs):
        if recipe not in ("ucd", "authors"):
            raise ConfigError(f"ChangeFormer recipe must be 'ucd' or 'authors', got {recipe!r}")
        self.recipe = recipe
        self.embed_dims = list(embed_dims)
        self.depths = list(depths)
        self.num_heads = list(num_heads)
        self.sr_ratios = list(sr_ratios)
        self.mlp_ratio = mlp_ratio
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.drop_rate = drop_rate
        self.attn_drop_rate = attn_drop_rate
        self.drop_path_rate = drop_path_rate
        self.multi_pred_weights = list(multi_pred_weights)
        super().__init__(**kwargs)


# --------------------------------------------------------------------------- encoder


class OverlapPatchEmbed(nn.Module):
    def __init__(self, cin: int, dim: int, patch: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, patch, stride=stride, padding=patch // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class EfficientAttention(nn.Module):
    """Multi-head self-attention with keys/values from a ``sr_ratio``-strided conv (+ LayerNorm)."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, attn_drop: float, proj_drop: float):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
        if self.sr_ratio > 1:
            x = self.norm(self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2))
        k, v = self.kv(x).reshape(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = self.attn_drop((q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1))
        return self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(b, n, c)))


class MixFFN(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = self.fc1(x)
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        return self.drop(self.fc2(self.drop(F.gelu(x))))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, sr_ratio: int, drop: float, attn_drop: float,
                 drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = EfficientAttention(dim, heads, sr_ratio, attn_drop, drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio), drop)
        self.drop_path = StochasticDepth(drop_path, mode="row")

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class Encoder(nn.Module):
    def __init__(self, config: ChangeFormerConfig, in_channels: int):
        super().__init__()
        dims = config.embed_dims
        n = sum(config.depths)
        dpr = [config.drop_path_rate * i / max(n - 1, 1) for i in range(n)]
        self.patch_embeds = nn.ModuleList()
        self.stages = nn.ModuleList()
        self.norms = nn.ModuleList()
        cur, cin = 0, in_channels
        for i, (dim, depth) in enumerate(zip(dims, config.depths)):
            patch, stride = (7, 4) if i == 0 else (config.patch_size, 2)
            self.patch_embeds.append(OverlapPatchEmbed(cin, dim, patch, stride))
            self.stages.append(nn.ModuleList(
                TransformerBlock(dim, config.num_heads[i], config.mlp_ratio, config.sr_ratios[i], config.drop_rate,
                                 config.attn_drop_rate, dpr[cur + j])
                for j in range(depth)
            ))
            self.norms.append(nn.LayerNorm(dim, eps=1e-6))
            cur += depth
            cin = dim
        for m in self.modules():  # the authors' encoder init applies to these (see ChangeFormer._init_weights)
            m._mit_init = True

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for embed, blocks, norm in zip(self.patch_embeds, self.stages, self.norms):
            t, h, w = embed(x)
            for blk in blocks:
                t = blk(t, h, w)
            x = norm(t).reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
            outs.append(x)
        return outs


# --------------------------------------------------------------------------- decoder


def conv_diff(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(cout),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU())


def make_prediction(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(cout),
                         nn.Conv2d(cout, cout, 3, padding=1))


class ResidualBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x))) * 0.1


class Decoder(nn.Module):
    def __init__(self, in_dims: list[int], dim: int, num_classes: int = 2):
        super().__init__()
        self.linear = nn.ModuleList(nn.Linear(c, dim) for c in in_dims)
        self.diff = nn.ModuleList(conv_diff(2 * dim, dim) for _ in in_dims)
        self.pred = nn.ModuleList(make_prediction(dim, num_classes) for _ in in_dims)
        self.linear_fuse = nn.Sequential(nn.Conv2d(dim * len(in_dims), dim, 1), nn.BatchNorm2d(dim))
        self.convd2x = nn.ConvTranspose2d(dim, dim, 4, stride=2, padding=1)
        self.dense_2x = ResidualBlock(dim)
        self.convd1x = nn.ConvTranspose2d(dim, dim, 4, stride=2, padding=1)
        self.dense_1x = ResidualBlock(dim)
        self.change_probability = nn.Conv2d(dim, num_classes, 3, padding=1)

    def _project(self, i: int, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return self.linear[i](x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, -1, h, w)

    def forward(self, feats_a: list[torch.Tensor], feats_b: list[torch.Tensor], heads: bool = True) -> list[torch.Tensor]:
        outputs, ups = [], []
        size1 = feats_a[0].shape[-2:]
        prev = None
        for i in reversed(range(len(feats_a))):  # coarsest (1/32) to finest (1/4)
            d = self.diff[i](torch.cat([self._project(i, feats_a[i]), self._project(i, feats_b[i])], dim=1))
            if prev is not None:
                d = d + F.interpolate(prev, size=d.shape[-2:], mode="bilinear", align_corners=False)
            if heads:
                outputs.append(self.pred[i](d))
            ups.append(F.interpolate(d, size=size1, mode="bilinear", align_corners=False) if i else d)
            prev = d
        x = self.linear_fuse(torch.cat(ups, dim=1))
        x = self.dense_1x(self.convd1x(self.dense_2x(self.convd2x(x))))
        outputs.append(self.change_probability(x))
        return outputs


class ChangeFormer(ZooModel):
    """ChangeFormer V6: siamese hierarchical transformer + multi-scale difference decoder."""

    config_class = ChangeFormerConfig
    size_divisor = 32

    def __init__(self, config: ChangeFormerConfig):
        super().__init__(config)
        self.encoder = Encoder(config, self.num_bands)
        self.decoder = Decoder(config.embed_dims, config.embed_dim)
        self.post_init()
        self.freeze_unused()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if not getattr(module, "_mit_init", False):
            return
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            nn.init.zeros_(module.bias)

    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor) -> ZooPrediction:
        heads = self.config.recipe == "authors"
        outputs = self.decoder(self.encoder(image_a), self.encoder(image_b), heads=heads)
        return ZooPrediction(outputs[-1], aux=outputs[:-1])

    def frozen_modules(self) -> list[nn.Module]:
        return [self.decoder.pred] if self.config.recipe == "ucd" else []

    def compute_loss(self, prediction: ZooPrediction, labels: torch.Tensor) -> torch.Tensor:
        if self.config.recipe == "ucd":
            return ce_loss(prediction.logits, labels)
        preds = [*prediction.aux, prediction.logits]
        weights = self.config.multi_pred_weights
        if len(weights) != len(preds):
            raise ConfigError(f"multi_pred_weights needs {len(preds)} weights, got {len(weights)}")
        return sum(w * ce_loss(p, resize_labels(labels, p.shape[-2:])) for w, p in zip(weights, preds))


register_architecture("changeformer", ChangeFormer, config_builder(ChangeFormerConfig))
