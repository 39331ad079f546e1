"""SwinSUNet (Zhang, Chen, Wang, Chen, IEEE TGRS 2022, "SwinSUNet: pure transformer network for remote sensing image
change detection"), as UCD builds it (``SwinSUNet(in_chans, num_classes)``, ``img_size`` 256).

A weight-shared Swin-T-style encoder (4×4 patch embedding to 96 channels + LayerNorm; stages of 2, 2 and 6 (shifted)
window-attention blocks, window 8, with patch merging between them) runs on each date. The two stride-32 token maps are
concatenated, projected (Linear 1536 → 768 + LayerNorm) and pass the fourth stage (2 blocks, 24 heads). Three decoder
stages each expand ×2 (Linear + LayerNorm, pixel shuffle to a quarter of the channels), concatenate both dates' skip
tokens of that scale, re-weight channels (CBAM-style channel attention, ratio 2), project (Linear + LayerNorm) and run
Swin blocks (6, 2, 2; heads 12, 6, 3). A final ×4 expansion (LayerNorm, Linear, pixel shuffle to 24 channels),
LayerNorm and a Linear head give two class scores per pixel; UCD's network ends in a log-softmax, which maskcd applies
in its loss and probabilities instead (same values: ``log_softmax`` is idempotent).

Sizes: Swin blocks use the released rule (a stage no wider than the window uses one window and no shift), so inputs
must make every stage a multiple of 8 tokens: they are padded to a multiple of 256. At 256 px this is exactly the
released computation; other multiples of 256 run as the released network built for that ``img_size`` would. The
shifted-window masks are computed for the input's size; the released code stores them as buffers for ``img_size``
(256), which maskcd keeps (``img_size``) so that UCD checkpoints load as they are. Each decoder stage also declares a
Linear + LayerNorm (``lc``, ``norm_lc``) that is never called; UCD's 41.56 M (2^20 units) counts them, maskcd keeps
them frozen.

Loss: cross-entropy (UCD's SwinSUNet config), 255 ignored. Stochastic depth 0.2 (linear over the encoder blocks; the
decoder stages reuse the encoder's rates as released). Random init: truncated normal (std 0.02) for Linear layers and
the relative position tables.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth
from transformers import PreTrainedConfig

from maskcd.errors import ConfigError
from maskcd.models.registry import register_architecture
from maskcd.models.zoo._common import ZooModel, ZooPrediction, ce_loss, config_builder

MASK_VALUE = -100.0


class SwinSUNetConfig(PreTrainedConfig):
    """SwinSUNet hyper-parameters (defaults: UCD's build).

    Args:
        img_size: Size the shifted-window mask buffers are stored for (the released layout; inputs may be any
            multiple of ``32 * window_size``).
        embed_dim: Channels after the patch embedding.
        depths: Swin blocks per encoder stage (the fourth stage runs once, on the fused pair).
        num_heads: Attention heads per encoder stage.
        up_depths: Swin blocks per decoder stage.
        up_num_heads: Attention heads per decoder stage.
        window_size: Attention window (tokens per side).
        mlp_ratio: Hidden width of the block MLPs relative to their input.
        drop_path_rate: Largest stochastic-depth rate.
    """

    model_type = "maskcd-swinsunet"

    def __init__(self, img_size: int = 256, embed_dim: int = 96, depths: list[int] | None = None,
                 num_heads: list[int] | None = None, up_depths: list[int] | None = None,
                 up_num_heads: list[int] | None = None, window_size: int = 8, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.2, **kwargs):
        self.img_size = img_size
        self.embed_dim = embed_dim
        self.depths = list(depths or [2, 2, 6, 2])
        self.num_heads = list(num_heads or [3, 6, 12, 24])
        self.up_depths = list(up_depths or [6, 2, 2])
        self.up_num_heads = list(up_num_heads or [12, 6, 3])
        self.window_size = window_size
        self.mlp_ratio = mlp_ratio
        self.drop_path_rate = drop_path_rate
        super().__init__(**kwargs)


def relative_position_index(ws: int) -> torch.Tensor:
    """``(ws², ws²)`` index into the ``(2ws-1)²`` relative-position bias table (Swin's layout)."""
    ys, xs = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])
    rel = (coords[:, :, None] - coords[:, None, :]) + (ws - 1)
    return rel[0] * (2 * ws - 1) + rel[1]


def to_windows(x: torch.Tensor, ws: int) -> torch.Tensor:
    """``(B, H, W, C)`` → ``(B · nW, ws², C)``, windows in row-major order."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def from_windows(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    c = windows.shape[-1]
    x = windows.reshape(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def shifted_window_mask(h: int, w: int, ws: int, shift: int) -> torch.Tensor:
    """``(nW, ws², ws²)`` additive mask (0 / -100) keeping attention inside each region of the rolled map."""
    regions = torch.zeros(1, h, w, 1)
    bounds = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    label = 0
    for rows in bounds:
        for cols in bounds:
            regions[:, rows, cols] = label
            label += 1
    win = to_windows(regions, ws)[..., 0]
    different = win[:, None, :] != win[:, :, None]
    return torch.zeros(different.shape).masked_fill(different, MASK_VALUE)


def window_geometry(h: int, w: int, window: int, shift: int) -> tuple[int, int]:
    """The released rule: a map no larger than the window is one window, unshifted."""
    if min(h, w) <= window:
        return min(h, w), 0
    return window, shift


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative-position bias."""

    def __init__(self, dim: int, ws: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(ws))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        bw, n, c = x.shape
        q, k, v = self.qkv(x).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        attn = attn + bias.reshape(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.reshape(bw // nw, nw, self.heads, n, n) + mask[None, :, None]).reshape(bw, self.heads, n, n)
        return self.proj((attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention + MLP block on ``(B, H·W, C)`` tokens.

    ``layout_resolution`` fixes the window, the shift and the stored mask buffer as the released block built for that
    resolution has them; ``forward`` applies the same rule to the actual resolution.
    """

    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: float, drop_path: float,
                 layout_resolution: int):
        super().__init__()
        self.window, self.shift = window, shift
        ws, sh = window_geometry(layout_resolution, layout_resolution, window, shift)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, ws, heads)
        self.drop_path = StochasticDepth(drop_path, "row") if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if sh > 0:  # the released checkpoint layout stores the mask of its img_size
            self.register_buffer("attn_mask", shifted_window_mask(layout_resolution, layout_resolution, ws, sh))
        else:
            self.attn_mask = None
        self._masks: dict = {}

    def _mask(self, h: int, w: int, ws: int, shift: int, device: torch.device) -> torch.Tensor:
        key = (h, w, ws, shift, device)
        if key not in self._masks:
            self._masks[key] = shifted_window_mask(h, w, ws, shift).to(device)
        return self._masks[key]

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        h, w = hw
        b, _, c = x.shape
        ws, shift = window_geometry(h, w, self.window, self.shift)
        y = self.norm1(x).reshape(b, h, w, c)
        if shift:
            y = torch.roll(y, (-shift, -shift), dims=(1, 2))
        mask = self._mask(h, w, ws, shift, x.device) if shift else None
        y = from_windows(self.attn(to_windows(y, ws), mask), ws, h, w)
        if shift:
            y = torch.roll(y, (shift, shift), dims=(1, 2))
        x = x + self.drop_path(y.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def make_blocks(dim: int, depth: int, heads: int, window: int, mlp_ratio: float, rates: list[float],
                layout_resolution: int) -> nn.ModuleList:
    return nn.ModuleList(
        SwinBlock(dim, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio, rates[i], layout_resolution)
        for i in range(depth)
    )


class PatchMerging(nn.Module):
    """2×2 neighbours concatenated (order: (0,0), (1,0), (0,1), (1,1)) → LayerNorm → Linear 4C → 2C."""

    def __init__(self, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        h, w = hw
        b, _, c = x.shape
        x = x.reshape(b, h, w, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.reshape(b, -1, 4 * c)))


class EncoderStage(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float, rates: list[float],
                 layout_resolution: int, downsample: bool):
        super().__init__()
        self.blocks = make_blocks(dim, depth, heads, window, mlp_ratio, rates, layout_resolution)
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (downsampled tokens, tokens before downsampling)."""
        for block in self.blocks:
            x = block(x, hw)
        return (x if self.downsample is None else self.downsample(x, hw)), x


def pixel_shuffle_tokens(x: torch.Tensor, hw: tuple[int, int], r: int) -> torch.Tensor:
    """``(B, H·W, C)`` → ``(B, rH·rW, C/r²)``: channel ``c·r² + i·r + j`` goes to sub-pixel ``(i, j)``."""
    h, w = hw
    b, _, c = x.shape
    x = F.pixel_shuffle(x.transpose(1, 2).reshape(b, c, h, w), r)
    return x.flatten(2).transpose(1, 2)


class ChannelAttention(nn.Module):
    """``sigmoid(mlp(avgpool) + mlp(maxpool))`` over the channels of ``(B, N, C)`` tokens (bias-free 1×1 MLP)."""

    def __init__(self, channels: int, ratio: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // ratio, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // ratio, channels, 1, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        def mlp(v):
            return self.fc2(F.relu(self.fc1(v[:, :, None, None])))[:, :, 0, 0]

        gate = torch.sigmoid(mlp(tokens.mean(dim=1)) + mlp(tokens.amax(dim=1)))
        return tokens * gate[:, None, :]


class UpsampleConnection(nn.Module):
    """×2 token expansion (Linear + LayerNorm, pixel shuffle to C/4), both dates' skips, channel attention,
    Linear + LayerNorm to C/2."""

    def __init__(self, dim: int):
        super().__init__()
        self.ln1 = nn.Linear(dim, dim, bias=False)
        self.norm1 = nn.LayerNorm(dim)
        self.ln2 = nn.Linear(dim * 5 // 4, dim // 2, bias=False)
        self.norm2 = nn.LayerNorm(dim // 2)
        self.ca = ChannelAttention(dim * 5 // 4, 2)

    def forward(self, x: torch.Tensor, hw: tuple[int, int], skip_a: torch.Tensor, skip_b: torch.Tensor):
        x = pixel_shuffle_tokens(self.norm1(self.ln1(x)), hw, 2)
        x = self.ca(torch.cat([x, skip_a, skip_b], dim=2))
        return self.norm2(self.ln2(x))


class DecoderStage(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float, rates: list[float],
                 layout_resolution: int):
        super().__init__()
        self.upsample = UpsampleConnection(dim)
        self.blocks = make_blocks(dim // 2, depth, heads, window, mlp_ratio, rates, 2 * layout_resolution)
        self.lc = nn.Linear(dim // 2 * 3, dim // 2, bias=False)  # declared, never called in the released code
        self.norm_lc = nn.LayerNorm(dim // 2)

    def forward(self, x, hw, skip_a, skip_b) -> torch.Tensor:
        x = self.upsample(x, hw, skip_a, skip_b)
        hw = (2 * hw[0], 2 * hw[1])
        for block in self.blocks:
            x = block(x, hw)
        return x


class PatchEmbed(nn.Module):
    def __init__(self, in_ch: int, dim: int, patch: int = 4):
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class PatchExpanding4(nn.Module):
    """LayerNorm → Linear C → 4C → pixel shuffle ×4 (to C/4 channels)."""

    def __init__(self, dim: int):
        super().__init__()
        self.expand = nn.Linear(dim, 4 * dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return pixel_shuffle_tokens(self.expand(self.norm(x)), hw, 4)


class SwinSUNet(ZooModel):
    """SwinSUNet: shared Swin encoder, fused deepest stage, Swin decoder with skip channel attention, ×4 head."""

    config_class = SwinSUNetConfig

    def __init__(self, config: SwinSUNetConfig):
        super().__init__(config)
        dim, ws, mr = config.embed_dim, config.window_size, config.mlp_ratio
        depths, n = config.depths, len(config.depths)
        if n != 4 or len(config.up_depths) != 3:
            raise ConfigError("SwinSUNet needs 4 encoder stages (depths) and 3 decoder stages (up_depths)")
        rates = torch.linspace(0, config.drop_path_rate, sum(depths), device="cpu").tolist()
        base = config.img_size // 4
        self.patch_embed = PatchEmbed(self.num_bands, dim)
        stages: list[nn.Module] = []
        for i in range(n):
            stages.append(EncoderStage(dim * 2 ** i, depths[i], config.num_heads[i], ws, mr,
                                       rates[sum(depths[:i]):sum(depths[:i + 1])], base // 2 ** i, i < n - 1))
        for i in range(3):  # decoder stages reuse the rates of encoder stages 2, 1, 0 (as released)
            stages.append(DecoderStage(dim * 2 ** (n - 1 - i), config.up_depths[i], config.up_num_heads[i], ws, mr,
                                       rates[sum(depths[:2 - i]):sum(depths[:3 - i])], base // 2 ** (n - 1 - i)))
        self.layers = nn.ModuleList(stages)
        self.upsample1 = PatchExpanding4(dim)
        self.norm_cd = nn.LayerNorm(dim // 4)
        self.head_cd = nn.Linear(dim // 4, 2)
        self.lc_c = nn.Linear(dim * 16, dim * 8)
        self.norm_c = nn.LayerNorm(dim * 8)
        self.post_init()
        self.freeze_unused()

    @property
    def size_divisor(self) -> int:
        return 32 * self.config.window_size

    def frozen_modules(self) -> list[nn.Module]:
        return [m for stage in self.layers[4:] for m in (stage.lc, stage.norm_lc)]

    def _init_extra(self, module: nn.Module) -> None:
        # the released init: truncated normal (0.02) for Linear weights and bias tables, zero Linear biases; lc_c and
        # the channel-attention convs keep PyTorch's defaults (built after / outside the released init)
        if isinstance(module, nn.Linear) and module is not self.lc_c:
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, WindowAttention):
            nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], tuple[int, int]]:
        hw = (x.shape[-2] // 4, x.shape[-1] // 4)
        x = self.patch_embed(x)
        skips = []
        for stage in self.layers[:3]:
            x, before = stage(x, hw)
            skips.append(before)
            hw = (hw[0] // 2, hw[1] // 2)
        return x, skips, hw

    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor) -> ZooPrediction:
        b, _, h, w = image_a.shape
        xa, skips_a, hw = self._encode(image_a)
        xb, skips_b, _ = self._encode(image_b)
        x, _ = self.layers[3](self.norm_c(self.lc_c(torch.cat([xa, xb], dim=2))), hw)
        for stage, level in zip(self.layers[4:], (2, 1, 0)):
            x = stage(x, hw, skips_a[level], skips_b[level])
            hw = (2 * hw[0], 2 * hw[1])
        x = self.head_cd(self.norm_cd(self.upsample1(x, hw)))
        return ZooPrediction(x.transpose(1, 2).reshape(b, 2, h, w))

    def compute_loss(self, prediction: ZooPrediction, labels: torch.Tensor) -> torch.Tensor:
        return ce_loss(prediction.logits, labels)


register_architecture("swinsunet", SwinSUNet, config_builder(SwinSUNetConfig))
