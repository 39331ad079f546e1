"""ICIF-Net, Intra-scale Cross-Interaction and Inter-scale Feature Fusion (Feng, Yang, Jiang, Shi, Liu, IEEE TGRS
2022, doi 10.1109/TGRS.2022.3168331, "ICIF-Net: Intra-scale cross-interaction and inter-scale feature fusion network
for bitemporal remote sensing images change detection"), as UCD trains it (``ICIFNet``).

**Hybrid encoder, shared by both dates.** A ResNet-18 (torchvision; ``layer4`` removed) gives local features 64@1/4,
128@1/8, 256@1/16, and a PVTv2-b1 (widths 64/128/320/512, heads 1/2/5/8, MLP ratios 8/8/4/4, two blocks per stage,
spatial-reduction ratios 8/4/2/1, overlapping patch embeddings 7×7/4 then 3×3/2, LayerNorm ε 1e-6 in the blocks and
after each stage, stochastic depth up to 0.1) gives global features 64@1/4, 128@1/8, 320@1/16.

**Intra-scale cross-interaction** (per level and per date, not shared between dates): both inputs get a 2D sin/cos
positional encoding and a 1×1 conv → BN → ReLU to the PVT width ``C``; one shared ``qkv`` projection (8 heads) gives
queries/keys/values for the CNN tokens (l) and the PVT tokens (g); two CoaT-style factorised attentions with
convolutional relative position encoding (depth-wise windows 3/5/7 over 2/3/3 heads) compute ``cur1 = Att(q_g, k_l,
v_l)`` and ``cur2 = Att(q_l, k_g, v_g)`` (``scale · q (softmax_N(k)ᵀ v) + q ⊙ DWConv(v)``, then a projection and
dropout 0.1); a pre-activation residual bottleneck fuses ``[cur1, cur2]`` (dropout 0.1).

**Inter-scale fusion**, three decoders per date: the g-path on ``cur1`` and the l-path on ``cur2`` (1×1 conv + BN
transition layers, and ``decode`` blocks that cross-gate the finer map with the upsampled coarser one), and an
attention-gated U-Net path on the fused maps. Each path's absolute T1/T2 difference at 1/4 is upsampled ×4 (bilinear)
and classified by a 3×3 conv → BN → ReLU → 3×3 conv head into 2 class logits.

Two recipes (``recipe``):

* ``"ucd"`` (default): UCD predicts from, and trains with cross-entropy on, the g-path output only. The l-path, the
  U-Net path and the cross-interaction fusion blocks then never reach the loss, so UCD never updates them; maskcd keeps
  exactly those frozen (``requires_grad=False``) and does not run them.
* ``"authors"``: the ICIF-Net authors' recipe: loss ``CE(g) + CE(l) + 0.5 · CE(U-Net)`` with every branch trained, and
  the prediction from the sum of the three outputs' logits.

UCD builds, and counts in its 24.64 M (2^20 units), layers the forward pass never calls: ResNet's ``fc``, PVT's fourth
stage (computed by UCD, its output unused), three ``query/key/value`` matrices per cross-interaction block and the
attention's own ``qkv``. maskcd keeps them, frozen, for the published parameter count and checkpoint layout.

No pretrained weights (UCD builds it with ``pretrained=False``); initialisation as published: Kaiming-normal
(fan-in) convs in the fusion and decoder modules, truncated-normal (0.02) linear layers and He (fan-out) convs in the
PVT, torchvision's ResNet init. No input normalisation, as UCD. Inputs are padded to a multiple of 16.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18
from torchvision.ops import StochasticDepth
from transformers import PreTrainedConfig

from maskcd.errors import ConfigError
from maskcd.models.registry import register_architecture
from maskcd.models.zoo._common import ZooModel, ZooPrediction, ce_loss, config_builder

RECIPES = ("ucd", "authors")


class ICIFNetConfig(PreTrainedConfig):
    """ICIF-Net hyper-parameters (defaults = UCD's ``ICIFNet(num_classes=2)``).

    Args:
        pvt_embed_dims: PVTv2-b1 stage widths ([64, 128, 320, 512]); the first three must be 64, 128 and the
            cross-interaction width of level 1/16.
        pvt_depths: Transformer blocks per PVT stage ([2, 2, 2, 2]).
        drop_rate: ICIF-Net's dropout rate; the cross-interaction blocks use half of it (0.2 → 0.1).
        drop_path_rate: PVT stochastic-depth rate (0.1).
        recipe: ``"ucd"`` (default; prediction from, and CE on, the g-path output, as UCD) or ``"authors"`` (CE on
            all three outputs, prediction from their sum).
    """

    model_type = "maskcd-icifnet"

    def __init__(self, pvt_embed_dims: list[int] | None = None, pvt_depths: list[int] | None = None,
                 drop_rate: float = 0.2, drop_path_rate: float = 0.1, recipe: str = "ucd",
                 **kwargs):
        self.pvt_embed_dims = list(pvt_embed_dims) if pvt_embed_dims is not None else [64, 128, 320, 512]
        self.pvt_depths = list(pvt_depths) if pvt_depths is not None else [2, 2, 2, 2]
        if len(self.pvt_embed_dims) != 4 or len(self.pvt_depths) != 4 or self.pvt_embed_dims[:2] != [64, 128]:
            raise ConfigError(f"ICIFNet PVT: 4 stages starting with widths 64, 128, got {self.pvt_embed_dims}")
        if recipe not in RECIPES:
            raise ConfigError(f"ICIFNet recipe must be one of {RECIPES}, got {recipe!r}")
        self.drop_rate = drop_rate
        self.drop_path_rate = drop_path_rate
        self.recipe = recipe
        super().__init__(**kwargs)


# --------------------------------------------------------------------------- PVTv2-b1


class DepthwiseMix(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w))
        return x.flatten(2).transpose(1, 2)


class MixFFN(nn.Module):
    """Linear → 3×3 depth-wise conv → GELU → linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DepthwiseMix(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), h, w)))


class SRAttention(nn.Module):
    """Multi-head attention whose keys/values come from a ``sr``-strided conv + LayerNorm reduction of the tokens."""

    def __init__(self, dim: int, heads: int, sr: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr
        if sr > 1:
            self.sr = nn.Conv2d(dim, dim, sr, stride=sr)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.heads, c // self.heads).transpose(1, 2)
        src = x
        if self.sr_ratio != 1:
            src = self.norm(self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2))
        k, v = self.kv(src).reshape(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class PVTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int, sr: int, drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SRAttention(dim, heads, sr)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MixFFN(dim, dim * mlp_ratio)
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class PVTPatchEmbed(nn.Module):
    """Overlapping patch embedding: ``k``×``k`` conv with stride ``s`` (padding k // 2) → LayerNorm."""

    def __init__(self, cin: int, dim: int, k: int, s: int):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, k, stride=s, padding=k // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class PVTv2(nn.Module):
    """PVTv2 (b1 by default) with the published module names; ``forward`` returns the first ``stages`` maps."""

    def __init__(self, in_channels: int, dims: list[int], depths: list[int], drop_path_rate: float,
                 heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1)):
        super().__init__()
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        cin, start = in_channels, 0
        for i in range(4):
            self.add_module(f"patch_embed{i + 1}", PVTPatchEmbed(cin, dims[i], 7 if i == 0 else 3, 4 if i == 0 else 2))
            self.add_module(f"block{i + 1}", nn.ModuleList(
                PVTBlock(dims[i], heads[i], mlp_ratios[i], sr_ratios[i], rates[start + j]) for j in range(depths[i])
            ))
            self.add_module(f"norm{i + 1}", nn.LayerNorm(dims[i], eps=1e-6))
            cin, start = dims[i], start + depths[i]

    def unused_stage(self) -> list[nn.Module]:
        return [self.patch_embed4, self.block4, self.norm4]

    def forward(self, x: torch.Tensor, stages: int = 3) -> list[torch.Tensor]:
        outs = []
        for i in range(1, stages + 1):
            x, h, w = getattr(self, f"patch_embed{i}")(x)
            for block in getattr(self, f"block{i}"):
                x = block(x, h, w)
            x = getattr(self, f"norm{i}")(x)
            x = x.reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
            outs.append(x)
        return outs


# --------------------------------------------------------------------------- cross-interaction


class SinCosTable(nn.Module):
    """2D sin/cos positional encoding of a ``channels``-wide map: the first half encodes the row, the second the
    column (frequencies ``10000^(-2i / ceil(C/2))``)."""

    def __init__(self, channels: int):
        super().__init__()
        half = math.ceil(channels / 2)
        self.half = half
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, half, 2).float() / half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        rows = torch.outer(torch.arange(h, device=x.device).to(self.inv_freq.dtype), self.inv_freq)
        cols = torch.outer(torch.arange(w, device=x.device).to(self.inv_freq.dtype), self.inv_freq)
        row_code = torch.cat([rows.sin(), rows.cos()], dim=-1)  # (H, half)
        col_code = torch.cat([cols.sin(), cols.cos()], dim=-1)  # (W, half)
        table = torch.zeros(h, w, 2 * self.half, device=x.device, dtype=x.dtype)
        table[:, :, :self.half] = row_code[:, None, :]
        table[:, :, self.half:] = col_code[None, :, :]
        return table[:, :, :c].permute(2, 0, 1)[None].expand(b, -1, -1, -1)


class PositionalEncoding(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.penc = SinCosTable(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.penc(x)


class ConvPosEnc(nn.Module):
    """CoaT's convolutional relative position encoding: depth-wise convs over head groups (windows 3/5/7)."""

    def __init__(self, head_dim: int, windows: dict[int, int]):
        super().__init__()
        self.conv_list = nn.ModuleList(
            nn.Conv2d(n * head_dim, n * head_dim, k, padding=k // 2, groups=n * head_dim) for k, n in windows.items()
        )
        self.splits = [n * head_dim for n in windows.values()]

    def forward(self, q: torch.Tensor, v: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, heads, n, ch = q.shape
        img = v.transpose(2, 3).reshape(b, heads * ch, h, w)
        conv = torch.cat([c(part) for c, part in zip(self.conv_list, img.split(self.splits, dim=1))], dim=1)
        return q * conv.reshape(b, heads, ch, n).transpose(2, 3)


class FactorizedAttention(nn.Module):
    """``scale · q (softmax_N(k)ᵀ v) + q ⊙ CRPE(v)`` then projection + dropout (``qkv`` is built but never used)."""

    def __init__(self, dim: int, heads: int, drop: float):
        super().__init__()
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)  # published layout only
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(drop)
        self.crpe = ConvPosEnc(dim // heads, {3: 2, 5: 3, 7: 3})

    def forward(self, q, k, v, h: int, w: int) -> torch.Tensor:
        b, heads, n, ch = q.shape
        context = k.softmax(dim=2).transpose(2, 3) @ v  # (B, heads, Ch, Ch)
        x = self.scale * (q @ context) + self.crpe(q, v, h, w)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, heads * ch)))


class ConvUnit(nn.Module):
    """Conv (bias, same padding) with optional BN and ReLU (ICIF-Net's ``Conv``)."""

    def __init__(self, cin: int, cout: int, k: int, bn: bool = False, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=(k - 1) // 2)
        self.bn = nn.BatchNorm2d(cout) if bn else None
        self.use_relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.use_relu else x


class PreActBottleneck(nn.Module):
    """BN-ReLU-1×1 → BN-ReLU-3×3 → BN-ReLU-1×1 (to ``cout``), plus a 1×1 projection of the input."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = ConvUnit(cin, mid, 1, relu=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = ConvUnit(mid, mid, 3, relu=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv3 = ConvUnit(mid, cout, 1, relu=False)
        self.skip_layer = ConvUnit(cin, cout, 1, relu=False)
        self.need_skip = cin != cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.skip_layer(x) if self.need_skip else x
        y = self.conv1(F.relu(self.bn1(x)))
        y = self.conv2(F.relu(self.bn2(y)))
        y = self.conv3(F.relu(self.bn3(y)))
        return y + shortcut


def conv1x1_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CrossInteraction(nn.Module):
    """Intra-scale cross-interaction of the CNN map ``Y`` (``cy`` channels) and the PVT map ``S`` (``cs``)."""

    def __init__(self, cy: int, cs: int, cout: int, drop: float, heads: int = 8):
        super().__init__()
        self.heads = heads
        self.Sconv = conv1x1_bn_relu(cs, cs)
        self.Yconv = conv1x1_bn_relu(cy, cs)
        for name in ("query", "key", "value"):  # published layout only: never called
            self.add_module(name, nn.Linear(cs, cs, bias=False))
        self.Spe = PositionalEncoding(cs)
        self.Ype = PositionalEncoding(cy)
        self.qkv = nn.Linear(cs, 3 * cs)
        self.factoratt_crpe = FactorizedAttention(cs, heads, drop)
        self.residual = PreActBottleneck(2 * cs, cout)
        self.dropout = nn.Dropout2d(drop)

    def unused(self) -> list[nn.Module]:
        return [self.query, self.key, self.value, self.factoratt_crpe.qkv]

    def _heads(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, c = tokens.shape
        qkv = self.qkv(tokens).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def forward(self, y: torch.Tensor, s: torch.Tensor, fuse: bool) -> tuple[torch.Tensor | None, torch.Tensor,
                                                                             torch.Tensor]:
        """Returns ``(fused or None, cur1, cur2)``; ``cur2`` is None when not ``fuse`` (only ``cur1`` is needed)."""
        b, cs, h, w = s.shape
        s_tok = self.Sconv(s + self.Spe(s)).reshape(b, cs, h * w).transpose(1, 2)
        y_tok = self.Yconv(y + self.Ype(y)).reshape(b, cs, h * w).transpose(1, 2)
        q_l, k_l, v_l = self._heads(y_tok)
        q_g, k_g, v_g = self._heads(s_tok)
        cur1 = self.factoratt_crpe(q_g, k_l, v_l, h, w).transpose(1, 2).reshape(b, cs, h, w)
        if not fuse:
            return None, cur1, None
        cur2 = self.factoratt_crpe(q_l, k_g, v_g, h, w).transpose(1, 2).reshape(b, cs, h, w)
        return self.dropout(self.residual(torch.cat([cur1, cur2], dim=1))), cur1, cur2


# --------------------------------------------------------------------------- decoders


class AttentionGate(nn.Module):
    """``x · sigmoid(BN(ψ(relu(BN(W_g g) + BN(W_x x)))))``."""

    def __init__(self, cg: int, cx: int, cmid: int):
        super().__init__()
        self.W_g = nn.Sequential(nn.Conv2d(cg, cmid, 1), nn.BatchNorm2d(cmid))
        self.W_x = nn.Sequential(nn.Conv2d(cx, cmid, 1), nn.BatchNorm2d(cmid))
        self.psi = nn.Sequential(nn.Conv2d(cmid, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x * self.psi(F.relu(self.W_g(g) + self.W_x(x)))


class ResidualDoubleConv(nn.Module):
    """``relu(conv3×3-BN-ReLU-conv3×3-BN(x) + conv1×1-BN(x))``."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.double_conv = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout),
        )
        self.identity = nn.Sequential(nn.Conv2d(cin, cout, 1), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.double_conv(x) + self.identity(x))


class GatedUp(nn.Module):
    """×2 bilinear (align_corners) upsampling, attention gate on the skip, ``cat([skip, up])``, residual double
    conv."""

    def __init__(self, cin: int, cout: int, cskip: int):
        super().__init__()
        self.conv = ResidualDoubleConv(cin + cskip, cout)
        self.attn_block = AttentionGate(cin, cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.conv(torch.cat([self.attn_block(x, skip), x], dim=1))


class Transition(nn.Module):
    """1×1 conv (no bias) → BN (no ReLU)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class CrossGate(nn.Module):
    """ICIF-Net's ``decode``: ``relu(conv(left) ⊙ up(down))`` and ``relu(up(conv(down)) ⊙ left)``, fused by
    3×3 conv → BN → ReLU (bilinear upsampling without align_corners)."""

    def __init__(self, c_left: int, c_down: int, cout: int):
        super().__init__()
        self.conv_d1 = nn.Conv2d(c_down, cout, 3, padding=1)
        self.conv_l = nn.Conv2d(c_left, cout, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * cout, cout, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, left: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
        down_gate = self.conv_d1(down)
        left_gate = self.conv_l(left)
        size = left.shape[-2:]
        if down.shape[-2:] != size:
            down = F.interpolate(down, size=size, mode="bilinear")
        if down_gate.shape[-2:] != size:
            down_gate = F.interpolate(down_gate, size=size, mode="bilinear")
        z1 = F.relu(left_gate * down)
        z2 = F.relu(down_gate * left)
        return F.relu(self.bn3(self.conv3(torch.cat([z1, z2], dim=1))))


def head(c: int) -> nn.Sequential:
    return nn.Sequential(ConvUnit(c, c, 3, bn=True), ConvUnit(c, 2, 3, relu=False))


class ICIFNet(ZooModel):
    """ICIF-Net: ResNet-18 + PVTv2-b1 per date, cross-interaction per level, g-path decoder (+ l- and U-Net paths)."""

    config_class = ICIFNetConfig
    size_divisor = 16

    def __init__(self, config: ICIFNetConfig):
        super().__init__(config)
        self.resnet = resnet18()
        if self.num_bands != 3:
            self.resnet.conv1 = nn.Conv2d(self.num_bands, 64, 7, stride=2, padding=3, bias=False)
        self.resnet.layer4 = nn.Identity()  # ICIF-Net stops at 1/16
        dims = config.pvt_embed_dims
        self.backbone = PVTv2(self.num_bands, dims, config.pvt_depths, config.drop_path_rate)
        self.final_x, self.final_1, self.final_2 = head(64), head(64), head(64)
        drop = config.drop_rate / 2
        for suffix in ("", "_img2"):
            self.add_module(f"cross2{suffix}", CrossInteraction(256, dims[2], 256, drop))
            self.add_module(f"cross3{suffix}", CrossInteraction(128, dims[1], 128, drop))
            self.add_module(f"cross4{suffix}", CrossInteraction(64, dims[0], 64, drop))
            self.add_module(f"up2{suffix}", GatedUp(256, 128, 128))
            self.add_module(f"up3{suffix}", GatedUp(128, 64, 64))
        for suffix in ("", "_img2"):
            for path, idx in (("g", "1"), ("l", "2")):
                self.add_module(f"Translayer2_{path}{suffix}", Transition(dims[2], 128))
                self.add_module(f"fam43_{idx}{suffix}", CrossGate(128, 128, 128))
                self.add_module(f"Translayer3_{path}{suffix}", Transition(128, 64))
                self.add_module(f"fam32_{idx}{suffix}", CrossGate(64, 64, 64))
        self.post_init()
        self.freeze_unused()

    @property
    def _all_paths(self) -> bool:
        return self.config.recipe == "authors"

    def _aux_only(self) -> list[nn.Module]:
        """Modules that only feed the l-path and U-Net outputs (never reaching UCD's loss or any prediction)."""
        mods = [self.final_1, self.final_x]
        for s in ("", "_img2"):
            mods += [getattr(self, f"cross{k}{s}").residual for k in (2, 3, 4)]
            mods += [getattr(self, n) for n in (f"up2{s}", f"up3{s}", f"Translayer2_l{s}", f"fam43_2{s}",
                                                 f"Translayer3_l{s}", f"fam32_2{s}")]
        return mods

    def frozen_modules(self) -> list[nn.Module]:
        never_called = [self.resnet.fc, *self.backbone.unused_stage()]
        for s in ("", "_img2"):
            for k in (2, 3, 4):
                never_called += getattr(self, f"cross{k}{s}").unused()
        return never_called + ([] if self._all_paths else self._aux_only())

    def _init_extra(self, module: nn.Module) -> None:
        if module is not self:
            return
        for m in self.resnet.modules():  # torchvision's ResNet init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.backbone.modules():  # PVTv2's own init
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(m.bias)
        for name, child in self.named_children():  # ICIF-Net's init_weights on the fusion and decoder modules
            if name in ("resnet", "backbone"):
                continue
            for m in child.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")

    def _date(self, x: torch.Tensor, suffix: str, all_paths: bool) -> tuple[torch.Tensor, ...]:
        """One date's 1/4 maps of the g-path, and (with ``all_paths``) of the l-path and the U-Net path."""
        pvt = self.backbone(x, stages=3)
        r = self.resnet
        c1 = r.layer1(r.maxpool(r.relu(r.bn1(r.conv1(x)))))
        c2 = r.layer2(c1)
        c3 = r.layer3(c2)

        def m(name: str) -> nn.Module:
            return getattr(self, name + suffix)

        fused2, g2, l2 = m("cross2")(c3, pvt[2], all_paths)
        fused3, g3, l3 = m("cross3")(c2, pvt[1], all_paths)
        fused4, g4, l4 = m("cross4")(c1, pvt[0], all_paths)
        g = m("fam32_1")(g4, m("Translayer3_g")(m("fam43_1")(g3, m("Translayer2_g")(g2))))
        if not all_paths:
            return (g,)
        up = m("up3")(m("up2")(fused2, fused3), fused4)
        loc = m("fam32_2")(l4, m("Translayer3_l")(m("fam43_2")(l3, m("Translayer2_l")(l2))))
        return g, loc, up

    @staticmethod
    def _diff_up(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.interpolate((a - b).abs(), scale_factor=4, mode="bilinear")

    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor) -> ZooPrediction:
        all_paths = self._all_paths
        pa, pb = self._date(image_a, "", all_paths), self._date(image_b, "_img2", all_paths)
        main = self.final_2(self._diff_up(pa[0], pb[0]))  # UCD's main_predictions
        if not all_paths:
            return ZooPrediction(main)
        local = self.final_1(self._diff_up(pa[1], pb[1]))
        unet = self.final_x(self._diff_up(pa[2], pb[2]))
        return ZooPrediction(main + local + unet, aux=[main, local, unet])

    def compute_loss(self, prediction: ZooPrediction, labels: torch.Tensor) -> torch.Tensor:
        if not prediction.aux:
            return ce_loss(prediction.logits, labels)
        main, local, unet = prediction.aux  # the authors' recipe
        return ce_loss(main, labels) + ce_loss(local, labels) + 0.5 * ce_loss(unet, labels)


register_architecture("icifnet", ICIFNet, config_builder(ICIFNetConfig))
