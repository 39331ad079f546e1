"""Building blocks of Daudt et al.'s three fully convolutional change-detection U-Nets (ICIP 2018).

FC-EF, FC-Siam-conc and FC-Siam-diff share a 4-level encoder (16-32-64-128 channels; 2, 2, 3, 3 convolutions per level;
every convolution 3×3 → BatchNorm → ReLU → Dropout2d(0.2); 2×2 max-pooling after each level) and a mirrored decoder
(stride-2 3×3 transposed convolutions to upsample, replication padding to the skip's size so any input size works,
then the level's convolutions written as stride-1 transposed convolutions as in the authors' code). They differ only
in what the skip connections carry.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WIDTHS = (16, 32, 64, 128)
DEPTHS = (2, 2, 3, 3)


class ConvUnit(nn.Sequential):
    """3×3 (transposed) conv → BN → ReLU → Dropout2d(0.2)."""

    def __init__(self, cin: int, cout: int, transposed: bool = False, dropout: float = 0.2):
        conv = nn.ConvTranspose2d(cin, cout, 3, padding=1) if transposed else nn.Conv2d(cin, cout, 3, padding=1)
        super().__init__(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.Dropout2d(dropout))


class Encoder(nn.Module):
    """Returns the last feature map of each level (before pooling) and the final pooled map."""

    def __init__(self, in_channels: int, dropout: float = 0.2):
        super().__init__()
        self.levels = nn.ModuleList()
        cin = in_channels
        for width, depth in zip(WIDTHS, DEPTHS):
            units = []
            for _ in range(depth):
                units.append(ConvUnit(cin, width, dropout=dropout))
                cin = width
            self.levels.append(nn.Sequential(*units))

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips = []
        for level in self.levels:
            x = level(x)
            skips.append(x)
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        return skips, x


class Decoder(nn.Module):
    """Mirrored decoder; ``skip_factor`` = how many encoder maps each skip concatenates (1, or 2 for FC-Siam-conc)."""

    def __init__(self, num_labels: int, skip_factor: int = 1, dropout: float = 0.2):
        super().__init__()
        self.upconvs = nn.ModuleList()
        self.levels = nn.ModuleList()
        for i in reversed(range(len(WIDTHS))):
            width = WIDTHS[i]
            self.upconvs.append(nn.ConvTranspose2d(width, width, 3, padding=1, stride=2, output_padding=1))
            out_last = WIDTHS[i - 1] if i > 0 else None
            units = []
            cin = width * (1 + skip_factor)
            for j in range(DEPTHS[i]):
                last = j == DEPTHS[i] - 1
                if last and out_last is None:  # the final projection to the classes has no BN/ReLU
                    units.append(nn.ConvTranspose2d(cin, num_labels, 3, padding=1))
                else:
                    cout = out_last if last else width
                    units.append(ConvUnit(cin, cout, transposed=True, dropout=dropout))
                    cin = cout
            self.levels.append(nn.Sequential(*units))

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for upconv, level, skip in zip(self.upconvs, self.levels, reversed(skips)):
            x = upconv(x)
            x = F.pad(x, (0, skip.shape[-1] - x.shape[-1], 0, skip.shape[-2] - x.shape[-2]), mode="replicate")
            x = level(torch.cat([x, skip], dim=1))
        return x
