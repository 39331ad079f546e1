"""RDPNet, the Region Detail Preserving Network (Chen et al., IEEE TGRS 2022, doi 10.1109/TGRS.2022.3227098).

Early fusion: the two dates are concatenated (2 × bands channels) and cut into 8×8 patches by a stride-8 convolution
to ``hidden_dim`` (384) channels, followed by Switchable Normalisation and GELU. Everything then runs at 1/8 through
``depth`` (6) ConvMixer-style blocks: a depth-wise 9×9 conv → SwitchNorm → GELU with a residual add, then a
point-wise 1×1 conv → SwitchNorm → GELU without one. After every mixer block an up-sampling branch (1×1 conv to
``branch_dim`` (32) channels → SwitchNorm → GELU, then an 8×8 stride-8 transposed conv → SwitchNorm → GELU) brings the
block's output back to full resolution. The ``depth`` branch outputs are concatenated, scaled by a learnable
per-channel weight (drawn from N(0, 1) at initialisation) and classified by a 1×1 conv into 2 classes.

Switchable Normalisation (Luo et al., ICLR 2019) normalises with a softmax-weighted mix of instance, layer and batch
statistics (unbiased per-instance variance; the layer and batch statistics are derived from the per-instance ones).
Batch statistics are tracked as running averages ``0.9 · old + 0.1 · new`` and used in eval mode, as in the authors'
module. Module names follow the published code, so UCD checkpoints (``RDPNet``, 1.62 M in 2^20 units) load as they
are.

Loss: cross-entropy, as UCD trains it (the authors' edge-weighted loss and curriculum are not used by UCD). No
pretrained weights. Inputs are padded to a multiple of 8.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig

from maskcd.errors import ConfigError
from maskcd.models.registry import register_architecture
from maskcd.models.zoo._common import ZooModel, ZooPrediction, ce_loss, config_builder


class RDPNetConfig(PreTrainedConfig):
    """RDPNet hyper-parameters (defaults = the published network, UCD's ``RDPNet``).

    Args:
        hidden_dim: Channels of the 1/8-resolution trunk (384).
        branch_dim: Channels of each full-resolution up-sampling branch (32).
        depth: Number of mixer blocks, each with its own branch (6).
        patch_size: Stride of the patch embedding and of the branches' transposed convs (8).
        kernel_size: Depth-wise kernel of the mixer blocks (9).
    """

    model_type = "maskcd-rdpnet"

    def __init__(self, hidden_dim: int = 384, branch_dim: int = 32, depth: int = 6, patch_size: int = 8,
                 kernel_size: int = 9, **kwargs):
        if kernel_size % 2 != 1:
            raise ConfigError(f"RDPNet kernel_size must be odd (same-size depth-wise conv), got {kernel_size}")
        self.hidden_dim = hidden_dim
        self.branch_dim = branch_dim
        self.depth = depth
        self.patch_size = patch_size
        self.kernel_size = kernel_size
        super().__init__(**kwargs)


class SwitchableNorm2d(nn.Module):
    """Switchable Normalisation over ``(N, C, H, W)``: softmax-weighted instance / layer / batch statistics.

    Parameters ``weight``/``bias`` have shape ``(1, C, 1, 1)``, the mixing logits ``mean_weight``/``var_weight`` 3
    entries each (instance, layer, batch); buffers ``running_mean``/``running_var`` ``(1, C, 1)`` hold the batch
    statistics, updated as ``momentum · old + (1 - momentum) · new`` while training.
    """

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.9):
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.empty(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.empty(1, channels, 1, 1))
        self.mean_weight = nn.Parameter(torch.empty(3))
        self.var_weight = nn.Parameter(torch.empty(3))
        self.register_buffer("running_mean", torch.zeros(1, channels, 1))
        self.register_buffer("running_var", torch.zeros(1, channels, 1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        nn.init.ones_(self.mean_weight)
        nn.init.ones_(self.var_weight)
        nn.init.zeros_(self.running_mean)
        nn.init.zeros_(self.running_var)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        flat = x.reshape(n, c, h * w)
        inst_mean = flat.mean(dim=-1, keepdim=True)
        inst_var = flat.var(dim=-1, keepdim=True)
        second = inst_var + inst_mean.pow(2)  # per-instance E[x^2], from which the pooled statistics follow
        layer_mean = inst_mean.mean(dim=1, keepdim=True)
        layer_var = second.mean(dim=1, keepdim=True) - layer_mean.pow(2)
        if self.training:
            batch_mean = inst_mean.mean(dim=0, keepdim=True)
            batch_var = second.mean(dim=0, keepdim=True) - batch_mean.pow(2)
            with torch.no_grad():
                self.running_mean.mul_(self.momentum).add_((1 - self.momentum) * batch_mean)
                self.running_var.mul_(self.momentum).add_((1 - self.momentum) * batch_var)
        else:
            batch_mean, batch_var = self.running_mean, self.running_var
        wm = self.mean_weight.softmax(dim=0)
        wv = self.var_weight.softmax(dim=0)
        mean = wm[0] * inst_mean + wm[1] * layer_mean + wm[2] * batch_mean
        var = wv[0] * inst_var + wv[1] * layer_var + wv[2] * batch_var
        out = (flat - mean) / (var + self.eps).sqrt()
        return out.reshape(n, c, h, w) * self.weight + self.bias


class MixerBlock(nn.Module):
    """``x + GELU(SN(dwconv(x)))`` then ``GELU(SN(pwconv(·)))`` (the second step has no residual)."""

    def __init__(self, dim: int, kernel_size: int):
        super().__init__()
        self.depthconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.gn1 = SwitchableNorm2d(dim)
        self.pointconv = nn.Conv2d(dim, dim, 1)
        self.gn2 = SwitchableNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + F.gelu(self.gn1(self.depthconv(x)))
        return F.gelu(self.gn2(self.pointconv(x)))


class UpBranch(nn.Module):
    """1×1 conv → SN → GELU, then a ``stride × stride`` transposed conv → SN → GELU back to full resolution."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(cin, cout, 1), SwitchableNorm2d(cout), nn.GELU())
        self.patchup = nn.ConvTranspose2d(cout, cout, stride, stride=stride)
        self.bn2 = SwitchableNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.bn2(self.patchup(self.layer1(x))))


class RDPNet(ZooModel):
    """RDPNet: patch embedding + ConvMixer trunk with one full-resolution branch per block."""

    config_class = RDPNetConfig

    def __init__(self, config: RDPNetConfig):
        super().__init__(config)
        self.size_divisor = config.patch_size
        d, p = config.hidden_dim, config.patch_size
        self.patchEmb = nn.Conv2d(2 * self.num_bands, d, p, stride=p)
        self.gn1 = SwitchableNorm2d(d)
        for i in range(1, config.depth + 1):  # published names: mixer1, ch1, mixer2, ch2, ...
            self.add_module(f"mixer{i}", MixerBlock(d, config.kernel_size))
            self.add_module(f"ch{i}", UpBranch(d, config.branch_dim, p))
        self.weight = nn.Parameter(torch.empty(1, config.branch_dim * config.depth, 1, 1))
        self.final = nn.Conv2d(config.branch_dim * config.depth, 2, 1)
        self.post_init()

    def _init_extra(self, module: nn.Module) -> None:
        if module is self:
            nn.init.normal_(self.weight)

    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor) -> ZooPrediction:
        x = F.gelu(self.gn1(self.patchEmb(torch.cat([image_a, image_b], dim=1))))
        branches = []
        for i in range(1, self.config.depth + 1):
            x = getattr(self, f"mixer{i}")(x)
            branches.append(getattr(self, f"ch{i}")(x))
        return ZooPrediction(self.final(torch.cat(branches, dim=1) * self.weight))

    def compute_loss(self, prediction: ZooPrediction, labels: torch.Tensor) -> torch.Tensor:
        return ce_loss(prediction.logits, labels)


register_architecture("rdpnet", RDPNet, config_builder(RDPNetConfig))
