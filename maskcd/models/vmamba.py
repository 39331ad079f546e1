"""VMamba v2 backbone (``Backbone_VSSM_ST``, forward type ``v05_noz``) as MineNetCD uses it, in plain PyTorch.

Structure (Liu et al., "VMamba: Visual State Space Model", NeurIPS 2024; github.com/MzeroMiko/VMamba release v2, as
vendored by github.com/EricYu97/MineNetCD):

* ``patch_embed`` (stride 4): Conv 3×3/2 (→ dim/2) + LayerNorm + GELU + Conv 3×3/2 (→ dim) + LayerNorm;
* four stages of VSS blocks (:class:`VisualStateSpaceBlock`), ``x += DropPath(SS2D(LN(x)))``,
  ``x += DropPath(MLP(LN(x)))`` (MLP ratio 4, GELU),
  each stage but the last followed by a Conv 3×3/2 + LayerNorm downsample;
* outputs: the features *before* each downsample (strides 4, 8, 16, 32), each through its own LayerNorm
  ``outnorm{i}``, returned channel-first.

``SS2D`` (v2 without the gate branch, "_noz"): ``in_proj`` Linear d → 2d (no bias), depthwise Conv 3×3 (no bias) +
SiLU, a four-direction cross scan (row-major, column-major and both reversed), per-direction projections
``x_proj_weight`` ``(4, R + 2N, 2d)`` to Δ-rank/B/C and ``dt_projs_weight`` ``(4, 2d, R)`` + ``dt_projs_bias`` to Δ,
the selective scan with ``A = -exp(A_logs)`` and skip ``Ds`` (:mod:`maskcd.models.selective_scan`, no custom kernels),
the sum of the four directions mapped back to the grid, ``out_norm`` LayerNorm(2d), ``out_proj`` Linear 2d → d
(no bias) and Dropout (0.6 in MineNetCD).

Parameter names and shapes are those of VMamba's checkpoints and of the published MineNetCD VMamba checkpoints
(``patch_embed.{0,2,5,7}``, ``layers.{i}.blocks.{j}.{norm,op.*,norm2,mlp.fc1,mlp.fc2}``,
``layers.{i}.downsample.{1,3}``, ``outnorm{i}``); the ``nn.Sequential`` indices of the permutes are kept for that.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.ops import StochasticDepth
from transformers import AutoConfig, PreTrainedConfig
from transformers.modeling_outputs import BackboneOutput

from maskcd.errors import ConfigError
from maskcd.models.selective_scan import DEFAULT_CHUNK, selective_scan

DIRECTIONS = 4


class VMambaConfig(PreTrainedConfig):
    """Hyper-parameters of the VMamba v2 backbone (defaults: MineNetCD's VSSM-T).

    Args:
        depths: Blocks per stage.
        dims: Channels per stage (an int ``c`` means ``c · 2^i``).
        d_state: SSM state size ``N`` (1 in MineNetCD).
        ssm_ratio: ``d_inner / d_model`` of SS2D.
        dt_rank: Rank of the Δ projection (``"auto"``: ``ceil(d_model / 16)``).
        d_conv: Depthwise conv kernel of SS2D.
        ssm_drop_rate: Dropout on the SS2D output (0.6 in MineNetCD).
        mlp_ratio: MLP hidden size / d_model.
        drop_path_rate: Stochastic depth, increasing linearly from 0 over all blocks.
        in_channels: Input bands.
        scan_chunk_size: Chunk length of the parallel selective scan.
    """

    model_type = "maskcd-vmamba"

    def __init__(
        self,
        depths: list[int] | tuple[int, ...] = (2, 2, 5, 2),
        dims: int | list[int] = 96,
        d_state: int = 1,
        ssm_ratio: float = 2.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        ssm_drop_rate: float = 0.6,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        in_channels: int = 3,
        scan_chunk_size: int = DEFAULT_CHUNK,
        **kwargs,
    ):
        depths = [int(d) for d in depths]
        if isinstance(dims, int):  # c → c·2^i per stage
            dims = [dims * 2**i for i in range(len(depths))]
        if len(dims) != len(depths):
            raise ConfigError(f"VMamba needs one dim per stage: depths {depths}, dims {dims}")
        self.depths = depths
        self.dims = [int(d) for d in dims]
        self.d_state = int(d_state)
        self.ssm_ratio = float(ssm_ratio)
        self.dt_rank = dt_rank if dt_rank == "auto" else int(dt_rank)
        self.d_conv = int(d_conv)
        self.ssm_drop_rate = float(ssm_drop_rate)
        self.mlp_ratio = float(mlp_ratio)
        self.drop_path_rate = float(drop_path_rate)
        self.in_channels = int(in_channels)
        self.scan_chunk_size = int(scan_chunk_size)
        super().__init__(**kwargs)


AutoConfig.register(VMambaConfig.model_type, VMambaConfig, exist_ok=True)


class PermuteDims(nn.Module):
    """``x.permute(*dims)`` (occupies the same ``nn.Sequential`` slots as in VMamba's checkpoints)."""

    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` → ``(B, 4, C, H·W)``: row-major, column-major, and both reversed."""
    rows = x.flatten(2)
    cols = x.transpose(2, 3).flatten(2)
    forward = torch.stack([rows, cols], dim=1)
    return torch.cat([forward, forward.flip(-1)], dim=1)


def cross_merge(y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(B, 4, C, H·W)`` → ``(B, C, H, W)``: undo each direction's order and sum the four."""
    b, _, c, _ = y.shape
    both = y[:, :2] + y[:, 2:].flip(-1)
    rows = both[:, 0].view(b, c, height, width)
    cols = both[:, 1].view(b, c, width, height).transpose(2, 3)
    return rows + cols


class SS2D(nn.Module):
    """2-D selective scan block, VMamba v2 ``v05_noz`` (module docstring). Channel-last ``(B, H, W, C)`` in and out."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 1,
        ssm_ratio: float = 2.0,
        dt_rank: int | str = "auto",
        d_conv: int = 3,
        dropout: float = 0.0,
        chunk_size: int = DEFAULT_CHUNK,
    ):
        super().__init__()
        d_inner = int(d_model * ssm_ratio)
        rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.d_inner, self.d_state, self.dt_rank, self.chunk_size = d_inner, d_state, rank, chunk_size
        self.in_proj = nn.Linear(d_model, d_inner, bias=False)
        self.act = nn.SiLU()
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=False)
        self.x_proj_weight = nn.Parameter(torch.empty(DIRECTIONS, rank + 2 * d_state, d_inner))
        self.dt_projs_weight = nn.Parameter(torch.empty(DIRECTIONS, d_inner, rank))
        self.dt_projs_bias = nn.Parameter(torch.empty(DIRECTIONS, d_inner))
        self.A_logs = nn.Parameter(torch.empty(DIRECTIONS * d_inner, d_state))
        self.Ds = nn.Parameter(torch.empty(DIRECTIONS * d_inner))
        self.out_norm = nn.LayerNorm(d_inner, eps=1e-5)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
        """Mamba's initialisation: Δ bias = softplus⁻¹ of a log-uniform step in [dt_min, dt_max], A = -(1..N),
        D = 1."""
        bound = self.d_inner**-0.5
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        nn.init.uniform_(self.dt_projs_weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        dt = torch.exp(torch.rand(DIRECTIONS, self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        x = self.act(self.conv2d(self.in_proj(x).permute(0, 3, 1, 2)))
        xs = cross_scan(x)  # (B, 4, D, L)
        proj = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, bs, cs = torch.split(proj, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        length = h * w
        y = selective_scan(
            xs.reshape(b, -1, length),
            dts.reshape(b, -1, length),
            -torch.exp(self.A_logs.float()),
            bs.contiguous(),
            cs.contiguous(),
            self.Ds,
            self.dt_projs_bias.reshape(-1),
            delta_softplus=True,
            chunk_size=self.chunk_size,
        ).view(b, DIRECTIONS, self.d_inner, length)
        y = cross_merge(y, h, w).permute(0, 2, 3, 1)
        y = self.out_norm(y).to(x.dtype)
        return self.dropout(self.out_proj(y))


class ChannelMlp(nn.Module):
    """``fc2(GELU(fc1(x)))``, channel-last."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisualStateSpaceBlock(nn.Module):
    """Pre-norm residual SS2D + pre-norm residual MLP, both with stochastic depth. Channel-last."""

    def __init__(self, dim: int, drop_path: float, config: VMambaConfig):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = SS2D(
            dim, config.d_state, config.ssm_ratio, config.dt_rank, config.d_conv, config.ssm_drop_rate,
            config.scan_chunk_size,
        )
        self.drop_path = StochasticDepth(drop_path, mode="row")
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = ChannelMlp(dim, int(dim * config.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = self.op(self.norm(x))
        x = x + self.drop_path(mixed)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VMambaStage(nn.Module):
    """One stage: ``blocks`` then ``downsample`` (identity after the last stage), named as in the checkpoints."""

    def __init__(self, blocks: list[nn.Module], downsample: nn.Module):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.downsample = downsample


def _downsample(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        PermuteDims(0, 3, 1, 2),
        nn.Conv2d(dim, out_dim, 3, stride=2, padding=1),
        PermuteDims(0, 2, 3, 1),
        nn.LayerNorm(out_dim),
    )


class VMambaBackbone(nn.Module):
    """Four-stage VMamba v2 feature extractor; ``forward(x)`` → :class:`BackboneOutput` with channel-first maps.

    Attributes:
        channels: Channels of the four feature maps (strides 4, 8, 16, 32).
    """

    def __init__(self, config: VMambaConfig):
        super().__init__()
        self.config, dims = config, config.dims
        self.channels = list(dims)
        self.patch_embed = nn.Sequential(
            nn.Conv2d(config.in_channels, dims[0] // 2, 3, stride=2, padding=1),
            PermuteDims(0, 2, 3, 1),
            nn.LayerNorm(dims[0] // 2),
            PermuteDims(0, 3, 1, 2),
            nn.GELU(),
            nn.Conv2d(dims[0] // 2, dims[0], 3, stride=2, padding=1),
            PermuteDims(0, 2, 3, 1),
            nn.LayerNorm(dims[0]),
        )
        total = sum(config.depths)
        rates = [config.drop_path_rate * i / max(1, total - 1) for i in range(total)]  # linear from 0
        stages = []
        start = 0
        for i, depth in enumerate(config.depths):
            blocks = [VisualStateSpaceBlock(dims[i], rates[start + j], config) for j in range(depth)]
            start += depth
            last = i == len(config.depths) - 1
            stages.append(VMambaStage(blocks, nn.Identity() if last else _downsample(dims[i], dims[i + 1])))
        self.layers = nn.ModuleList(stages)
        for i, dim in enumerate(dims):
            self.add_module(f"outnorm{i}", nn.LayerNorm(dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """VMamba's initialisation: truncated normal (0.02) Linear weights, zero biases, unit LayerNorms, PyTorch's
        default for the convolutions, Mamba's for the SSM parameters."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                module.reset_parameters()
            elif isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, SS2D):
                module.reset_ssm_parameters()

    def forward(self, pixel_values: torch.Tensor) -> BackboneOutput:
        x = self.patch_embed(pixel_values)
        maps = []
        for i, stage in enumerate(self.layers):
            x = stage.blocks(x)
            maps.append(getattr(self, f"outnorm{i}")(x).permute(0, 3, 1, 2).contiguous())
            x = stage.downsample(x)
        return BackboneOutput(feature_maps=tuple(maps))


def vmamba_shapes_from_state_dict(state: dict[str, torch.Tensor], prefix: str = "backbone.") -> dict:
    """``depths``, ``dims`` and ``d_state`` of a VMamba state dict (keys under ``prefix``), read from the weights."""
    depths = []
    for stage in range(16):
        marker = f"{prefix}layers.{stage}.blocks."
        blocks = {int(k[len(marker):].split(".", 1)[0]) for k in state if k.startswith(marker)}
        if not blocks:
            break
        depths.append(max(blocks) + 1)
    if not depths:
        raise KeyError(f"no '{prefix}layers.*.blocks.*' weights")
    dims = [int(state[f"{prefix}outnorm{i}.weight"].shape[0]) for i in range(len(depths))]
    d_state = int(state[f"{prefix}layers.0.blocks.0.op.A_logs"].shape[1])
    d_inner = int(state[f"{prefix}layers.0.blocks.0.op.in_proj.weight"].shape[0])
    rank = int(state[f"{prefix}layers.0.blocks.0.op.dt_projs_weight"].shape[2])
    d_conv = int(state[f"{prefix}layers.0.blocks.0.op.conv2d.weight"].shape[-1])
    mlp_hidden = int(state[f"{prefix}layers.0.blocks.0.mlp.fc1.weight"].shape[0])
    in_channels = int(state[f"{prefix}patch_embed.0.weight"].shape[1])
    shapes = dict(depths=depths, dims=dims, d_state=d_state, ssm_ratio=d_inner / dims[0], d_conv=d_conv,
                  mlp_ratio=mlp_hidden / dims[0], in_channels=in_channels)
    if rank != math.ceil(dims[0] / 16):
        shapes["dt_rank"] = rank
    return shapes
