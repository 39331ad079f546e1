"""FC-EF (Daudt, Le Saux, Boulch, ICIP 2018, "Fully convolutional siamese networks for change detection").

Early fusion: the two dates are concatenated along channels (``2 × bands`` input) and segmented by one U-Net
(:mod:`maskcd.models.zoo._daudt`: 16-32-64-128 channels, Dropout2d 0.2). Output: 2-class logits.

Loss: cross-entropy (the paper's NLL on log-softmax; the paper's per-dataset class weights are not applied, as in UCD).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedConfig

from maskcd.models.registry import register_architecture
from maskcd.models.zoo._common import ZooModel, ZooPrediction, ce_loss, config_builder
from maskcd.models.zoo._daudt import Decoder, Encoder


class FCEFConfig(PreTrainedConfig):
    """FC-EF hyper-parameters.

    Args:
        dropout: Dropout2d rate after every convolution (0.2).
    """

    model_type = "maskcd-fc-ef"

    def __init__(self, dropout: float = 0.2, **kwargs):
        self.dropout = dropout
        super().__init__(**kwargs)


class FCEF(ZooModel):
    """FC-EF: one U-Net on the channel-concatenated pair."""

    config_class = FCEFConfig

    def __init__(self, config: FCEFConfig):
        super().__init__(config)
        self.encoder = Encoder(2 * self.num_bands, dropout=config.dropout)
        self.decoder = Decoder(num_labels=2, skip_factor=1, dropout=config.dropout)
        self.post_init()

    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor) -> ZooPrediction:
        skips, x = self.encoder(torch.cat([image_a, image_b], dim=1))
        return ZooPrediction(self.decoder(x, skips))

    def compute_loss(self, prediction: ZooPrediction, labels: torch.Tensor) -> torch.Tensor:
        return ce_loss(prediction.logits, labels)


register_architecture("fc-ef", FCEF, config_builder(FCEFConfig))
