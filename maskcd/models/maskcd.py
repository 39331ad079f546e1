"""MaskCD (Yu et al., IEEE TGRS 2024): Mask2Former with a siamese pixel-level module.

The published model is transformers' ``Mask2FormerForUniversalSegmentation`` whose pixel-level module runs one shared
backbone on both dates, concatenates the two feature maps per level (before first) and feeds a pixel decoder built for
the doubled channels ("CLCRP" in the paper is transformers' deformable-attention ``Mask2FormerPixelDecoder``). The
masked-attention decoder, Hungarian matcher and loss are transformers' own, unchanged.

The module keeps the attribute names of the published checkpoints (``model.pixel_level_module.{encoder,decoder}``,
``model.transformer_module``, ``class_predictor``), so ``from_pretrained`` loads the transformers-4.35 checkpoints
``ericyu/MaskCD_*`` directly; transformers 5 renames the legacy Swin keys itself.

Deviations from the released scripts (github.com/EricYu97/MaskCD): labels give ``n`` targets for ``n`` pairs
(the released ``train.py`` passes ``2n`` after step 1, halving mask and dice losses); the change map is upsampled to
the input size instead of a hard-coded 256²; new models use 2 labels (+ no-object) while published checkpoints keep
their stored 150-label head. Transformers 5's matcher replaces NaN/inf costs by the dtype maximum where MaskCD
clamped to ±1e10; both only keep ``linear_sum_assignment`` finite.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Mask2FormerConfig
from transformers.backbone_utils import load_backbone
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerForUniversalSegmentation,
    Mask2FormerLoss,
    Mask2FormerModel,
    Mask2FormerPixelDecoder,
    Mask2FormerPixelLevelModuleOutput,
    Mask2FormerPreTrainedModel,
    Mask2FormerTransformerModule,
)

from maskcd.errors import ConfigError
from maskcd.models.base import (
    ChangeDetectionOutput,
    ChangeModelMixin,
    check_labels,
    pop_inference_spec,
    set_inference_spec,
)
from maskcd.models.registry import register_architecture, register_legacy_loader

CHANGE_CLASSES = {0: "unchanged", 1: "changed"}


@dataclass
class MaskCDOutput(ChangeDetectionOutput):
    """MaskCD output: the common fields plus transformers' mask-classification outputs.

    Args:
        class_queries_logits: ``(B, Q, K + 1)`` class logits per query (last = no object).
        masks_queries_logits: ``(B, Q, H / 4, W / 4)`` mask logits per query.
        auxiliary_logits: Per-decoder-layer predictions (deep supervision), when asked for.
        loss_dict: The weighted loss terms, when labels were given.
    """

    class_queries_logits: torch.FloatTensor | None = None
    masks_queries_logits: torch.FloatTensor | None = None
    auxiliary_logits: list | None = None
    loss_dict: dict | None = None


class MaskCDLoss(Mask2FormerLoss):
    """transformers' Mask2Former loss with the number of target masks averaged correctly over processes.

    ``Mask2FormerLoss.get_num_masks`` (4.35 and 5.x) reduces the count with accelerate's ``reduce``, whose default is
    the *mean*, then divides by the world size again, so under N processes the mask and dice terms come out N times
    too large. Mask2Former's intent (detectron2 ``criterion.py``) is ``all_reduce(sum) / world_size``.
    """

    def get_num_masks(self, class_labels, device: torch.device) -> torch.Tensor:
        num_masks = torch.as_tensor(float(sum(len(c) for c in class_labels)), device=device)
        from accelerate import PartialState
        from accelerate.utils import reduce

        if PartialState._shared_state and PartialState().num_processes > 1:
            num_masks = reduce(num_masks, reduction="sum") / PartialState().num_processes
        return torch.clamp(num_masks, min=1)


class MaskCDPixelLevelModule(nn.Module):
    """Siamese pixel-level module: shared backbone on both dates, per-level channel concatenation, pixel decoder.

    ``pixel_values`` is ``(2n, C, H, W)`` laid out ``[A_1..A_n, B_1..B_n]`` as in the published code.
    """

    def __init__(self, config: Mask2FormerConfig):
        super().__init__()
        self.encoder = load_backbone(config)
        if isinstance(getattr(getattr(self.encoder, "swin", None), "layernorm", None), nn.LayerNorm):
            # SwinBackbone runs the full SwinModel, whose final LayerNorm feeds no feature map: it is not in the
            # published checkpoints, would get no gradient (DDP unused parameters) and only costs time.
            self.encoder.swin.layernorm = nn.Identity()
        self.decoder = Mask2FormerPixelDecoder(config, feature_channels=[2 * c for c in self.encoder.channels])

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False):
        n = pixel_values.shape[0] // 2
        features = self.encoder(pixel_values).feature_maps
        fused = [torch.cat([f[:n], f[n:]], dim=1) for f in features]
        decoder_output = self.decoder(fused, output_hidden_states=output_hidden_states)
        return Mask2FormerPixelLevelModuleOutput(
            encoder_last_hidden_state=fused[-1],
            encoder_hidden_states=tuple(fused) if output_hidden_states else None,
            decoder_last_hidden_state=decoder_output.mask_features,
            decoder_hidden_states=decoder_output.multi_scale_features,
        )


class MaskCDModel(Mask2FormerModel):
    """``Mask2FormerModel`` with the siamese pixel-level module (forward inherited)."""

    def __init__(self, config: Mask2FormerConfig):
        Mask2FormerPreTrainedModel.__init__(self, config)
        self.pixel_level_module = MaskCDPixelLevelModule(config)
        self.transformer_module = Mask2FormerTransformerModule(in_features=config.feature_size, config=config)
        self.post_init()


class MaskCDForChangeDetection(ChangeModelMixin, Mask2FormerForUniversalSegmentation):
    """MaskCD called as ``model(image_a, image_b, labels=None)``; see :mod:`maskcd.models.base`."""

    config_class = Mask2FormerConfig
    main_input_name = "image_a"

    def __init__(self, config: Mask2FormerConfig):
        Mask2FormerPreTrainedModel.__init__(self, config)
        if config.num_labels < 2:
            raise ConfigError(f"MaskCD needs at least the 2 change classes, got num_labels={config.num_labels}")
        self.model = MaskCDModel(config)
        self.weight_dict = {
            "loss_cross_entropy": config.class_weight,
            "loss_mask": config.mask_weight,
            "loss_dice": config.dice_weight,
        }
        self.class_predictor = nn.Linear(config.hidden_dim, config.num_labels + 1)
        self.criterion = MaskCDLoss(config=config, weight_dict=self.weight_dict)
        self.post_init()

    @staticmethod
    def labels_to_targets(labels: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Mask-classification targets as in the original: one binary mask per class present (0 and/or 1).

        Ignored pixels (255) belong to neither mask.
        """
        mask_labels, class_labels = [], []
        present = torch.stack([(labels == c).flatten(1).any(1) for c in CHANGE_CLASSES], dim=1).cpu()
        for label, has in zip(labels, present):
            classes = [c for c in CHANGE_CLASSES if has[c]]
            masks = [(label == c) for c in classes]
            mask_labels.append(
                torch.stack(masks).float() if masks else label.new_zeros((0, *label.shape), dtype=torch.float)
            )
            class_labels.append(torch.tensor(classes, dtype=torch.long, device=labels.device))
        return mask_labels, class_labels

    @staticmethod
    def change_probability(
        class_queries_logits: torch.Tensor, masks_queries_logits: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """Change probability as the published ``test.py`` computes it.

        Class-weighted mask probabilities ``Σ_q softmax(class)[q, c] · sigmoid(mask)[q]`` for c ∈ {0, 1} (the softmax
        runs over all K + 1 logits, so a 151-way head works unchanged), bilinear to ``size``, softmax over the two
        classes, channel 1.
        """
        class_probs = class_queries_logits.float().softmax(-1)[..., :2]
        mask_probs = masks_queries_logits.float().sigmoid()
        seg = torch.einsum("bqc,bqhw->bchw", class_probs, mask_probs)
        seg = F.interpolate(seg, size=size, mode="bilinear", align_corners=False)
        return seg.softmax(dim=1)[:, 1]

    def forward(
        self,
        image_a: torch.Tensor,
        image_b: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_auxiliary_logits: bool | None = None,
        **kwargs,
    ) -> MaskCDOutput:
        if image_a.shape != image_b.shape:
            raise ValueError(f"image_a {tuple(image_a.shape)} and image_b {tuple(image_b.shape)} differ in shape")
        labels = check_labels(labels)
        mask_labels = class_labels = None
        if labels is not None:
            mask_labels, class_labels = self.labels_to_targets(labels)
        out = super().forward(
            pixel_values=torch.cat([image_a, image_b], dim=0),
            mask_labels=mask_labels,
            class_labels=class_labels,
            output_hidden_states=output_hidden_states,
            output_auxiliary_logits=output_auxiliary_logits,
            return_dict=True,
        )
        return MaskCDOutput(
            loss=out.loss,
            change_prob=self.change_probability(
                out.class_queries_logits, out.masks_queries_logits, size=image_a.shape[-2:]
            ),
            class_queries_logits=out.class_queries_logits,
            masks_queries_logits=out.masks_queries_logits,
            auxiliary_logits=out.auxiliary_logits,
        )


_CONFIG_KEYS = set(Mask2FormerConfig().to_dict()) | {"num_labels", "id2label", "label2id"}


def build_maskcd_config(backbone_config: dict | None = None, **kwargs) -> Mask2FormerConfig:
    """A MaskCD config from a preset mapping: Mask2FormerConfig fields, a backbone dict and the inference spec."""
    spec = pop_inference_spec(kwargs, _CONFIG_KEYS | {"backbone_config"}, "MaskCD")
    backbone_config = dict(backbone_config or {"model_type": "swin"})
    backbone_config.setdefault("num_channels", spec.num_bands)
    backbone_config.setdefault("out_features", ["stage1", "stage2", "stage3", "stage4"])
    num_labels = kwargs.pop("num_labels", 2)
    if "id2label" not in kwargs:
        kwargs["id2label"] = {i: CHANGE_CLASSES.get(i, f"LABEL_{i}") for i in range(num_labels)}
    config = Mask2FormerConfig(backbone_config=backbone_config, **kwargs)
    set_inference_spec(config, spec)
    return config


def _is_legacy_maskcd(cfg: dict) -> bool:
    return cfg.get("model_type") == "mask2former" and "Mask2FormerForUniversalSegmentation" in cfg.get(
        "architectures", ["Mask2FormerForUniversalSegmentation"]
    )


def load_legacy_maskcd(folder: Path, **kwargs) -> MaskCDForChangeDetection:
    """Load a published MaskCD checkpoint (transformers-4.35 ``config.json`` + ``pytorch_model.bin``).

    The pickle is read with ``weights_only=True`` (transformers' default); the 150-label head is kept as stored. The
    published checkpoints record no inference spec: they were trained on 8-bit RGB 256² chips normalised with the
    ADE/ImageNet mean and std, which are the defaults.
    """
    model = MaskCDForChangeDetection.from_pretrained(folder, **kwargs)
    model.config.maskcd_architecture = "maskcd"
    set_inference_spec(model.config)
    return model


register_architecture("maskcd", MaskCDForChangeDetection, build_maskcd_config)
register_legacy_loader(
    "MaskCD (transformers 4.35 Mask2Former)", _is_legacy_maskcd, load_legacy_maskcd, format="legacy-maskcd"
)
