"""USSFCNet (Lei, Tian, Xie, Li, Nandi, IEEE TGRS 2023, "Ultralightweight spatial-spectral feature cooperation network
for change detection in remote sensing images").

Two U-Net encoders with *separate* weights (one per date; 32-64-128-256-512 channels at ``ratio`` 0.5) whose
per-level absolute differences feed one U-Net decoder (2×2 transposed convs, skip concatenation). The first level is a
plain double 3×3 conv-BN-ReLU; every later conv is a *multi-scale decoupled convolution* (MSDConv): a 1×1 conv-BN-ReLU
gives half of the output channels ("native"), a cross-multi-dilation conv (CMConv, after PSConv) on those gives the
other half ("auxiliary"), which is re-weighted by the parameter-free spatial-spectral feature cooperation (SSFC:
``sigmoid((x - mean)² / (2 var) + 0.5)`` per channel). A CMConv sums three convolutions over the same input: a grouped
dilated 3×3 (dilation 3), a grouped 3×3 of dilation 6 on the input with the two halves of every channel group swapped,
and a dense 3×3 whose weights on the channel blocks the grouped ones already cover are zero and never trained (their
gradient is masked, as in the released code). A 1×1 conv gives the change logit; the network ends in a sigmoid.

Parameter names follow the released code (UCD ``USSFCNet``), so UCD checkpoints load as they are. Loss: binary
cross-entropy on the sigmoid output (UCD's default ``BCE``), 255 ignored. Inputs are padded to a multiple of 16.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig
from transformers import initialization as hf_init

from maskcd.models.registry import register_architecture
from maskcd.models.zoo._common import ZooModel, ZooPrediction, bce_loss, config_builder

SSFC_EPS = float(torch.finfo(torch.float32).eps)


class USSFCNetConfig(PreTrainedConfig):
    """USSFCNet hyper-parameters.

    Args:
        ratio: Width multiplier of the U-Net widths 64-128-256-512-1024 (0.5, as UCD builds it).
        dilation: Dilation of the grouped CMConv branch (the shifted branch uses twice this; 3).
    """

    model_type = "maskcd-ussfcnet"

    def __init__(self, ratio: float = 0.5, dilation: int = 3, **kwargs):
        self.ratio = ratio
        self.dilation = dilation
        super().__init__(**kwargs)


def cmconv_frozen_mask(weight_shape: tuple[int, ...], in_ch: int, groups: int, dilation_set: int = 4) -> torch.Tensor:
    """Entries of CMConv's dense-conv weight that stay zero: for each dilation block ``i`` (and group index ``j``,
    with the released code's ``i + j * groups`` row offset), the block's own output rows and the rows half a cycle
    further on, over the block's input columns. Slices past the tensor are cut, as Python slicing does."""
    mask = torch.zeros(weight_shape, dtype=torch.bool)
    cin = in_ch // (groups * dilation_set)
    cout = weight_shape[0] // (groups * dilation_set)
    for i in range(dilation_set):
        cols = slice(i * cin, (i + 1) * cin)
        for j in range(groups):
            for block in (i, (i + dilation_set // 2) % dilation_set):
                row = block + j * groups
                mask[row * cout:(row + 1) * cout, cols] = True
    return mask


class MaskedDenseConv(nn.Conv2d):
    """CMConv's dense grouped 3×3 conv: the entries of :func:`cmconv_frozen_mask` start at zero and get no gradient
    (the forward uses the stored values as they are)."""

    def __init__(self, in_ch: int, out_ch: int, groups: int, dilation_set: int):
        super().__init__(in_ch, out_ch, 3, padding=1, groups=groups, bias=False)
        self._mask_args = (tuple(self.weight.shape), in_ch, groups, dilation_set)
        self._mask: torch.Tensor | None = None
        self.reset_parameters()

    def frozen_mask(self) -> torch.Tensor:
        if self._mask is None or self._mask.device != self.weight.device:
            self._mask = cmconv_frozen_mask(*self._mask_args).to(self.weight.device)
        return self._mask

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "_mask_args") and self.weight.device.type != "meta":
            hf_init.copy_(self.weight, self.weight.detach().masked_fill(self.frozen_mask(), 0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = torch.where(self.frozen_mask(), self.weight.detach(), self.weight)
        return self._conv_forward(x, weight, None)


class CMConv(nn.Module):
    """Cross-multi-dilation 3×3 conv: grouped dilated conv + grouped half-swapped conv (2× dilation) + dense conv."""

    def __init__(self, in_ch: int, out_ch: int, groups: int, dilation: int, dilation_set: int = 4):
        super().__init__()
        self.groups = groups
        self.prim = nn.Conv2d(in_ch, out_ch, 3, padding=dilation, dilation=dilation, groups=groups * dilation_set,
                              bias=False)
        self.prim_shift = nn.Conv2d(in_ch, out_ch, 3, padding=2 * dilation, dilation=2 * dilation,
                                    groups=groups * dilation_set, bias=False)
        self.conv = MaskedDenseConv(in_ch, out_ch, groups, dilation_set)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        swapped = []
        for chunk in x.chunk(self.groups, dim=1):
            first, second = chunk.chunk(2, dim=1)
            swapped += [second, first]
        return self.prim(x) + self.conv(x) + self.prim_shift(torch.cat(swapped, dim=1))


def ssfc(x: torch.Tensor) -> torch.Tensor:
    """Spatial-spectral feature cooperation: parameter-free per-channel re-weighting by the squared deviation."""
    h, w = x.shape[-2:]
    sq = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
    var = sq.sum(dim=(2, 3), keepdim=True) / (h * w)
    return x * torch.sigmoid(sq / (2 * var + SSFC_EPS) + 0.5)


class MSDConvSSFC(nn.Module):
    """1×1 "native" conv-BN-ReLU, then CMConv-BN-ReLU + SSFC on it; the two concatenated (first ``out_ch``)."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int):
        super().__init__()
        self.out_ch = out_ch
        native = math.ceil(out_ch / 2)
        self.native = nn.Sequential(nn.Conv2d(in_ch, native, 1, bias=False), nn.BatchNorm2d(native),
                                    nn.ReLU(inplace=True))
        self.aux = nn.Sequential(CMConv(native, native, groups=native // 4, dilation=dilation), nn.BatchNorm2d(native),
                                 nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.native(x)
        return torch.cat([x, ssfc(self.aux(x))], dim=1)[:, :self.out_ch]


class FirstDoubleConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class MSDDoubleConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, dilation: int):
        super().__init__()
        self.Conv = nn.Sequential(
            MSDConvSSFC(in_ch, out_ch, dilation), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
            MSDConvSSFC(out_ch, out_ch, dilation), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.Conv(x)


class USSFCNet(ZooModel):
    """USSFCNet: two MSDConv+SSFC U-Net encoders, absolute differences, U-Net decoder, sigmoid output."""

    config_class = USSFCNetConfig
    size_divisor = 16

    def __init__(self, config: USSFCNetConfig):
        super().__init__(config)
        w = [int(c * config.ratio) for c in (64, 128, 256, 512, 1024)]
        d = config.dilation
        self.Conv1_1 = FirstDoubleConv(self.num_bands, w[0])
        self.Conv1_2 = FirstDoubleConv(self.num_bands, w[0])
        for level in range(1, 5):  # Conv2_1 ... Conv5_2
            for date in (1, 2):
                self.add_module(f"Conv{level + 1}_{date}", MSDDoubleConv(w[level - 1], w[level], d))
        for level in range(4, 0, -1):  # Up5/Up_conv5 ... Up2/Up_conv2
            self.add_module(f"Up{level + 1}", nn.ConvTranspose2d(w[level], w[level - 1], 2, stride=2))
            self.add_module(f"Up_conv{level + 1}", MSDDoubleConv(w[level], w[level - 1], d))
        self.Conv_1x1 = nn.Conv2d(w[0], 1, 1)
        self.post_init()

    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor) -> ZooPrediction:
        xa, xb = self.Conv1_1(image_a), self.Conv1_2(image_b)
        diffs = [(xa - xb).abs()]
        for level in range(2, 6):
            xa = getattr(self, f"Conv{level}_1")(F.max_pool2d(xa, 2))
            xb = getattr(self, f"Conv{level}_2")(F.max_pool2d(xb, 2))
            diffs.append((xa - xb).abs())
        x = diffs.pop()
        for level in range(5, 1, -1):
            x = getattr(self, f"Up{level}")(x)
            x = getattr(self, f"Up_conv{level}")(torch.cat([diffs.pop(), x], dim=1))
        return ZooPrediction(self.Conv_1x1(x))

    def compute_loss(self, prediction: ZooPrediction, labels: torch.Tensor) -> torch.Tensor:
        return bce_loss(prediction.logits, labels)


register_architecture("ussfcnet", USSFCNet, config_builder(USSFCNetConfig))
