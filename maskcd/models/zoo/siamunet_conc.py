"""FC-Siam-conc / SiamUnet-Conc (Daudt, Le Saux, Boulch, ICIP 2018).

A weight-shared encoder (:mod:`maskcd.models.zoo._daudt`) runs on each date; every skip connection concatenates the
upsampled decoder map with *both* dates' encoder maps (before, after); the decoder starts from the after image's
deepest pooled map, as in the authors' code. Output: 2-class logits.

Loss: cross-entropy (no class weights, as in UCD).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedConfig

from maskcd.models.registry import register_architecture
from maskcd.models.zoo._common import ZooModel, ZooPrediction, ce_loss, config_builder
from maskcd.models.zoo._daudt import Decoder, Encoder


class SiamUnetConcConfig(PreTrainedConfig):
    """SiamUnet-Conc hyper-parameters.

    Args:
        dropout: Dropout2d rate after every convolution (0.2).
    """

    model_type = "maskcd-siamunet-conc"

    def __init__(self, dropout: float = 0.2, **kwargs):
        self.dropout = dropout
        super().__init__(**kwargs)


class SiamUnetConc(ZooModel):
    """Siamese U-Net with concatenated skip connections."""

    config_class = SiamUnetConcConfig

    def __init__(self, config: SiamUnetConcConfig):
        super().__init__(config)
        self.encoder = Encoder(self.num_bands, dropout=config.dropout)
        self.decoder = Decoder(num_labels=2, skip_factor=2, dropout=config.dropout)
        self.post_init()

    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor) -> ZooPrediction:
        skips_a, _ = self.encoder(image_a)
        skips_b, x = self.encoder(image_b)
        skips = [torch.cat([sa, sb], dim=1) for sa, sb in zip(skips_a, skips_b)]
        return ZooPrediction(self.decoder(x, skips))

    def compute_loss(self, prediction: ZooPrediction, labels: torch.Tensor) -> torch.Tensor:
        return ce_loss(prediction.logits, labels)


register_architecture("siamunet-conc", SiamUnetConc, config_builder(SiamUnetConcConfig))
