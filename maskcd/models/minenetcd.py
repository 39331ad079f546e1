"""MineNetCD (Yu et al., IEEE TGRS 2024): siamese difference features + ChangeFFT + UperNet.

The published model (``EricYu97/MineNetCD: models/upernet.py``, UCD ``models/MineNetCD/minenetcd.py``) is
transformers' ``UperNetForSemanticSegmentation`` whose forward runs one shared backbone on both dates, takes the signed
per-level difference ``F_i = f(after)_i - f(before)_i`` and, with ``channel_mixing``, passes every level through a
*ChangeFFT* block (class ``EinFFT``) before transformers' stock ``UperNetHead`` decoder and ``UperNetFCNHead``
auxiliary head (input level 2). Loss: cross-entropy (ignore 255) on the main logits + 0.4 × cross-entropy on the
auxiliary logits, both bilinearly upsampled to the input size.

ChangeFFT (``EinFFT``, as in SiMBA's EinFFT) for ``F`` of shape ``(B, C, H, W)``: 2-D FFT (ortho) over H, W; a
block-diagonal (4 blocks) complex two-layer channel MLP identical at every frequency (ReLU after layer 1 on real and
imaginary parts); soft-shrink 0.01; inverse FFT (ortho); real part. For Swin/ResNet backbones the published code applies
the **same** block twice: ``F' = EinFFT_i(F)``; ``F̂ = F' + DropPath(EinFFT_i(LN_i(F')))`` (kept as coded: published
checkpoints embody it).

Attribute names follow the published checkpoints (``backbone``, ``decode_head``, ``auxiliary_head``,
``channel_mixing.{i}``, ``norm.{i}``) so their ``pytorch_model.bin`` loads through ``from_pretrained``; transformers 5
renames the legacy Swin keys itself (its ``SwinBackbone`` conversion mapping).

Deviations from the released code (github.com/EricYu97/MineNetCD, github.com/EricYu97/UCD): the backbone type is honoured (UCD hard-codes Swin-T, #11); ResNet
backbones are built from the ``microsoft/resnet-*`` architectures with random weights (nothing is downloaded); a
legacy checkpoint's Swin shapes are read from its weights, so the likely mislabelled "Swin-Diff-T" checkpoint that
holds a Swin-B loads as the Swin-B it is, with a warning (#13); transformers 5's ``SwinBackbone`` carries the Swin
classifier's final LayerNorm, which never reaches the feature maps and is absent from the published checkpoints: it is
replaced by an identity (no dead parameters). The concatenation variants of the released code are not implemented;
loading them fails with a clear message.

VMamba backbones (``VSSM_{T,S,B}_ST_Diff``, :mod:`maskcd.models.vmamba`; Liu et al., NeurIPS 2024) run in plain
PyTorch with our parallel selective scan (no Triton, no compiled CUDA extension). As published, their ChangeFFT path
applies each block **once**: ``F̂ = F + DropPath(EinFFT_i(LN_i(F)))``. Their published checkpoints load strictly: a
missing or unexpected key is an error (the original code's VMamba loader fell back silently to random weights).

Like the published model, training needs at least 2 pairs per batch: UperNet's pyramid pooling applies BatchNorm to
1×1 pooled maps, which PyTorch cannot normalise over a single sample.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth
from transformers import PreTrainedModel, UperNetConfig
from transformers.backbone_utils import load_backbone
from transformers.models.upernet.modeling_upernet import UperNetFCNHead, UperNetHead

from maskcd.models.base import (
    ChangeDetectionOutput,
    ChangeModelMixin,
    check_labels,
    pop_inference_spec,
    set_inference_spec,
)
from maskcd.errors import CheckpointError, ConfigError
from maskcd.models.registry import register_architecture, register_legacy_loader
from maskcd.models.vmamba import VMambaBackbone, VMambaConfig, vmamba_shapes_from_state_dict
from maskcd.models.weights_io import read_config, read_state_dict

logger = logging.getLogger(__name__)

OUT_FEATURES = ["stage1", "stage2", "stage3", "stage4"]

SWIN_BACKBONES = {
    # openmmlab/upernet-swin-{tiny,small,base} backbones; Swin-B as in ericyu/minenetcd-upernet-Swin-Diff-B-Pretrained
    "Swin_Diff_T": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, drop_path_rate=0.3),
    "Swin_Diff_S": dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24], window_size=7, drop_path_rate=0.3),
    "Swin_Diff_B": dict(
        embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12, drop_path_rate=0.1
    ),
}
RESNET_BACKBONES = {
    # microsoft/resnet-{18,50,101}
    "ResNet_Diff_18": dict(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512]),
    "ResNet_Diff_50": dict(layer_type="bottleneck", depths=[3, 4, 6, 3], hidden_sizes=[256, 512, 1024, 2048]),
    "ResNet_Diff_101": dict(layer_type="bottleneck", depths=[3, 4, 23, 3], hidden_sizes=[256, 512, 1024, 2048]),
}
# MineNetCD's test.py normalises with the ADE20k statistics of the UperNet image processor (0-255 scale)
ADE_MEAN = (123.675 / 255, 116.280 / 255, 103.530 / 255)
ADE_STD = (58.395 / 255, 57.120 / 255, 57.375 / 255)
VMAMBA_BACKBONES = {
    # MineNetCD's Backbone_VSSM_ST: v05_noz, d_state 1, ssm_ratio 2, ssm_drop_rate 0.6, drop_path 0.1
    "VSSM_T_ST_Diff": dict(depths=[2, 2, 5, 2], dims=[96, 192, 384, 768]),
    "VSSM_S_ST_Diff": dict(depths=[2, 2, 15, 2], dims=[96, 192, 384, 768]),
    "VSSM_B_ST_Diff": dict(depths=[2, 2, 15, 2], dims=[128, 256, 512, 1024]),
}
BACKBONE_TYPES = (*SWIN_BACKBONES, *RESNET_BACKBONES, *VMAMBA_BACKBONES)


class EinFFT(nn.Module):
    """ChangeFFT block: frequency-domain block-diagonal complex channel MLP with soft-shrink.

    Args:
        dim: Channel count ``C`` (divisible by ``num_blocks``).
        num_blocks: Diagonal blocks of the channel MLP (4 in the paper).
        sparsity_threshold: Soft-shrink λ on real and imaginary parts (0.01).
        scale: Standard deviation of the initial weights (0.02).
    """

    def __init__(self, dim: int, num_blocks: int = 4, sparsity_threshold: float = 0.01, scale: float = 0.02):
        super().__init__()
        if dim % num_blocks:
            raise ConfigError(f"ChangeFFT needs channels divisible by {num_blocks}, got {dim}")
        self.hidden_size = dim
        self.num_blocks = num_blocks
        self.block_size = dim // num_blocks
        self.sparsity_threshold = sparsity_threshold
        self.scale = scale
        shape_w = (2, num_blocks, self.block_size, self.block_size)
        shape_b = (2, num_blocks, self.block_size)
        self.complex_weight_1 = nn.Parameter(torch.randn(shape_w) * scale)
        self.complex_weight_2 = nn.Parameter(torch.randn(shape_w) * scale)
        self.complex_bias_1 = nn.Parameter(torch.randn(shape_b) * scale)
        self.complex_bias_2 = nn.Parameter(torch.randn(shape_b) * scale)

    def reset_parameters(self) -> None:
        for p in (self.complex_weight_1, self.complex_weight_2, self.complex_bias_1, self.complex_bias_2):
            nn.init.normal_(p, mean=0.0, std=self.scale)

    @staticmethod
    def _mul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...bd,bdk->...bk", x, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` real → ``(B, C, H, W)`` real."""
        b, c, h, w = x.shape
        x = x.permute(0, 2, 3, 1).reshape(b, h, w, self.num_blocks, self.block_size)
        x = torch.fft.fft2(x.float(), dim=(1, 2), norm="ortho")
        w1, b1, w2, b2 = self.complex_weight_1, self.complex_bias_1, self.complex_weight_2, self.complex_bias_2
        real_1 = F.relu(self._mul(x.real, w1[0]) - self._mul(x.imag, w1[1]) + b1[0])
        imag_1 = F.relu(self._mul(x.real, w1[1]) + self._mul(x.imag, w1[0]) + b1[1])
        real_2 = self._mul(real_1, w2[0]) - self._mul(imag_1, w2[1]) + b2[0]
        imag_2 = self._mul(real_1, w2[1]) + self._mul(imag_1, w2[0]) + b2[1]
        z = torch.stack([real_2, imag_2], dim=-1)
        if self.sparsity_threshold:
            z = F.softshrink(z, lambd=self.sparsity_threshold)
        z = torch.fft.ifft2(torch.view_as_complex(z.contiguous()), dim=(1, 2), norm="ortho").real
        return z.reshape(b, h, w, c).permute(0, 3, 1, 2)


class MineNetCDForChangeDetection(ChangeModelMixin, PreTrainedModel):
    """MineNetCD called as ``model(image_a, image_b, labels=None)`` (see :mod:`maskcd.models.base`).

    Output: :class:`ChangeDetectionOutput` with ``logits`` ``(B, 2, H, W)``, ``change_prob`` = softmax channel 1 and,
    with labels, ``loss`` = CE(ignore 255) + ``auxiliary_loss_weight`` × auxiliary CE.
    """

    config_class = UperNetConfig
    base_model_prefix = "minenetcd"
    main_input_name = "image_a"
    input_modalities = ("image",)

    def __init__(self, config: UperNetConfig):
        super().__init__(config)
        # VMamba ("diff" in the published code) applies ChangeFFT once; Swin/ResNet ("swindiff") twice
        self.is_vmamba = isinstance(config.backbone_config, VMambaConfig)
        self.backbone = VMambaBackbone(config.backbone_config) if self.is_vmamba else load_backbone(config)
        if hasattr(getattr(self.backbone, "swin", None), "layernorm"):
            # transformers' SwinBackbone keeps the classification model's final LayerNorm but never calls it; the
            # published (transformers 4.3x) checkpoints do not have it either
            self.backbone.swin.layernorm = nn.Identity()
        channels = list(self.backbone.channels)
        self.decode_head = UperNetHead(config, in_channels=channels)
        self.auxiliary_head = UperNetFCNHead(config, in_channels=channels) if config.use_auxiliary_head else None
        self.use_channel_mixing = bool(getattr(config, "channel_mixing", True))
        if self.use_channel_mixing:
            self.channel_mixing = nn.ModuleList([EinFFT(c) for c in channels])
            self.norm = nn.ModuleList([nn.LayerNorm(c) for c in channels])
            self.drop_path = StochasticDepth(getattr(config, "change_fft_drop_path", 0.1), mode="row")
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, VMambaBackbone):  # visited after its children: restores VMamba's own initialisation
            module.reset_parameters()
        elif isinstance(module, EinFFT):
            module.reset_parameters()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):  # the published UperNet heads: normal(0, initializer_range), zero bias
            nn.init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def change_features(self, image_a: torch.Tensor, image_b: torch.Tensor) -> list[torch.Tensor]:
        """Per-level ``f(image_b) - f(image_a)`` (post − pre), through ChangeFFT when enabled.

        The backbone runs once per date, as published (matters for BatchNorm backbones in training mode).
        """
        feats_a = self.backbone(image_a).feature_maps
        feats_b = self.backbone(image_b).feature_maps
        out = []
        for i, (fa, fb) in enumerate(zip(feats_a, feats_b)):
            x = fb - fa
            if self.use_channel_mixing:
                if not self.is_vmamba:
                    x = self.channel_mixing[i](x)
                y = self.norm[i](x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
                x = x + self.drop_path(self.channel_mixing[i](y))
            out.append(x)
        return out

    def forward(
        self, image_a: torch.Tensor, image_b: torch.Tensor, labels: torch.Tensor | None = None, **kwargs
    ) -> ChangeDetectionOutput:
        if image_a.shape != image_b.shape:
            raise ValueError(f"image_a {tuple(image_a.shape)} and image_b {tuple(image_b.shape)} differ in shape")
        labels = check_labels(labels)
        size = image_a.shape[-2:]
        features = self.change_features(image_a, image_b)
        logits = F.interpolate(self.decode_head(features), size=size, mode="bilinear", align_corners=False)
        loss = None
        if labels is not None:
            ce = nn.CrossEntropyLoss(ignore_index=self.config.loss_ignore_index)
            loss = ce(logits, labels)
            if self.auxiliary_head is not None:
                aux = F.interpolate(self.auxiliary_head(features), size=size, mode="bilinear", align_corners=False)
                loss = loss + self.config.auxiliary_loss_weight * ce(aux, labels)
        return ChangeDetectionOutput(loss=loss, change_prob=self.prob_from_logits(logits), logits=logits)


def _backbone_config(backbone_type: str, in_channels: int, overrides: dict | None = None) -> dict:
    if backbone_type in SWIN_BACKBONES:
        cfg = {"model_type": "swin", **SWIN_BACKBONES[backbone_type]}
    elif backbone_type in RESNET_BACKBONES:
        cfg = {"model_type": "resnet", "embedding_size": 64, **RESNET_BACKBONES[backbone_type]}
    elif backbone_type in VMAMBA_BACKBONES:
        cfg = {**VMAMBA_BACKBONES[backbone_type], **(overrides or {})}
        cfg.pop("model_type", None)
        return VMambaConfig(**cfg, in_channels=in_channels)
    else:
        raise ConfigError(f"unknown MineNetCD backbone_type {backbone_type!r}; valid: {', '.join(BACKBONE_TYPES)}")
    cfg.update(overrides or {})
    cfg["num_channels"] = in_channels
    cfg["out_features"] = list(OUT_FEATURES)
    return cfg


_UPERNET_KEYS = set(UperNetConfig().to_dict())
_EXTRA_KEYS = {"backbone_type", "channel_mixing", "change_fft_drop_path", "backbone_config", "num_labels"}


def build_minenetcd_config(
    backbone_type: str = "Swin_Diff_T",
    channel_mixing: bool = True,
    backbone_config: dict | None = None,
    num_labels: int = 2,
    change_fft_drop_path: float = 0.1,
    **kwargs,
) -> UperNetConfig:
    """A MineNetCD config (``UperNetConfig`` + ``backbone_type``, ``channel_mixing`` and the inference spec).

    Args:
        backbone_type: One of ``Swin_Diff_{T,S,B}``, ``ResNet_Diff_{18,50,101}``, ``VSSM_{T,S,B}_ST_Diff`` (the
            published names).
        channel_mixing: Insert ChangeFFT (True) or feed the plain difference to UperNet.
        backbone_config: Overrides of the backbone's config fields (e.g. a tiny Swin for tests).
        num_labels: Output classes (2: unchanged, changed).
        change_fft_drop_path: DropPath rate of the ChangeFFT residual (0.1 as published).
        **kwargs: ``UperNetConfig`` fields (``hidden_size``, ``pool_scales``, ``auxiliary_*``...) and
            :class:`InferenceSpec` fields.
    """
    spec = pop_inference_spec(kwargs, _UPERNET_KEYS | _EXTRA_KEYS, "MineNetCD")
    kwargs.setdefault("auxiliary_in_channels", None)  # None: UperNetFCNHead takes backbone.channels[2]
    config = UperNetConfig(
        backbone_config=_backbone_config(backbone_type, spec.num_bands, backbone_config),
        num_labels=num_labels,
        id2label={0: "unchanged", 1: "changed"} if num_labels == 2 else None,
        **kwargs,
    )
    config.backbone_type = backbone_type
    config.channel_mixing = bool(channel_mixing)
    config.change_fft_drop_path = float(change_fft_drop_path)
    set_inference_spec(config, spec)
    return config


# --------------------------------------------------------------------------- published (legacy) checkpoints


def _is_legacy_minenetcd(cfg: dict) -> bool:
    return (
        cfg.get("model_type") == "upernet"
        and "Backbone_type" in cfg
        and "UperNetForSemanticSegmentation" in cfg.get("architectures", ["UperNetForSemanticSegmentation"])
    )


def _swin_shapes_from_weights(sd: dict[str, torch.Tensor]) -> dict:
    """Swin ``embed_dim``, ``depths``, ``num_heads`` and ``window_size`` as stored in a legacy ``backbone.*`` state."""
    embed = sd["backbone.embeddings.patch_embeddings.projection.weight"].shape[0]
    depths, heads, window = [], [], None
    for layer in range(16):
        blocks = {
            int(m.group(1))
            for k in sd
            if (m := re.match(rf"backbone\.encoder\.layers\.{layer}\.blocks\.(\d+)\.", k))
        }
        if not blocks:
            break
        depths.append(max(blocks) + 1)
        table = sd[f"backbone.encoder.layers.{layer}.blocks.0.attention.self.relative_position_bias_table"]
        heads.append(int(table.shape[1]))
        window = int(round((table.shape[0] ** 0.5 + 1) / 2))
    return {"embed_dim": int(embed), "depths": depths, "num_heads": heads, "window_size": window}


def _resnet_shapes_from_weights(sd: dict[str, torch.Tensor]) -> dict:
    depths = []
    for stage in range(8):
        layers = {
            int(m.group(1)) for k in sd if (m := re.match(rf"backbone\.encoder\.stages\.{stage}\.layers\.(\d+)\.", k))
        }
        if not layers:
            break
        depths.append(max(layers) + 1)
    bottleneck = any(".layer.2." in k for k in sd if k.startswith("backbone.encoder.stages."))
    return {"depths": depths, "layer_type": "bottleneck" if bottleneck else "basic"}


def legacy_minenetcd_config(cfg: dict, state_dict: dict[str, torch.Tensor], source: str = "") -> UperNetConfig:
    """Translate a published ``UperNetForSemanticSegmentation`` MineNetCD config.json into a maskcd config.

    Swin shapes follow the stored weights (deviation 13); a ResNet checkpoint whose weights disagree with its
    ``Backbone_type`` is rejected.
    """
    btype = cfg["Backbone_type"]
    if btype not in BACKBONE_TYPES:
        raise CheckpointError(
            f"{source}: MineNetCD Backbone_type {btype!r} is not supported by maskcd (the concatenation variants are "
            f"not implemented); supported: {', '.join(BACKBONE_TYPES)}"
        )
    spec = {}
    if btype in VMAMBA_BACKBONES:
        try:
            shapes = vmamba_shapes_from_state_dict(state_dict)
        except KeyError as exc:
            raise CheckpointError(
                f"{source}: Backbone_type {btype} but the weights hold no VMamba backbone ({exc}); "
                f"fix Backbone_type in config.json or use the matching model.safetensors"
            ) from None
        named = VMAMBA_BACKBONES[btype]
        if any(shapes[k] != named[k] for k in named):
            logger.warning(
                "%s: Backbone_type %s but the weights hold a VMamba with depths %s, dims %s; following the weights",
                source, btype, shapes["depths"], shapes["dims"],
            )
        backbone = shapes
        backbone.pop("in_channels", None)
        spec = {"image_mean": list(ADE_MEAN), "image_std": list(ADE_STD)}
    elif btype in SWIN_BACKBONES:
        stored = dict(cfg.get("backbone_config") or {})
        stored.pop("out_indices", None)
        shapes = _swin_shapes_from_weights(state_dict)
        named = SWIN_BACKBONES[btype]
        if any(shapes[k] != named[k] for k in shapes):
            logger.warning(
                "%s: Backbone_type %s but the weights hold a Swin with %s; following the stored weights",
                source, btype, shapes,
            )
        mismatched = {k: (stored.get(k), v) for k, v in shapes.items() if k in stored and stored[k] != v}
        if mismatched:
            logger.warning("%s: config.json backbone_config disagrees with the weights %s; using the weights", source, mismatched)
        backbone = {**{k: v for k, v in stored.items() if k not in ("model_type",)}, **shapes}
        backbone.pop("num_channels", None)
        backbone.pop("hidden_size", None)
        backbone.pop("num_layers", None)
    else:
        shapes = _resnet_shapes_from_weights(state_dict)
        named = RESNET_BACKBONES[btype]
        if shapes["depths"] != named["depths"] or shapes["layer_type"] != named["layer_type"]:
            raise CheckpointError(
                f"{source}: Backbone_type {btype} expects a ResNet with depths {named['depths']} "
                f"({named['layer_type']}) but the weights hold depths {shapes['depths']} ({shapes['layer_type']}); "
                f"fix Backbone_type in config.json"
            )
        backbone = {}
    upernet = {k: cfg[k] for k in ("hidden_size", "pool_scales", "use_auxiliary_head", "auxiliary_loss_weight",
                                   "auxiliary_channels", "auxiliary_num_convs", "auxiliary_concat_input",
                                   "loss_ignore_index", "initializer_range") if k in cfg}
    num_labels = len(cfg["id2label"]) if "id2label" in cfg else 2
    return build_minenetcd_config(
        backbone_type=btype,
        channel_mixing=bool(cfg.get("channel_mixing", False)),
        backbone_config=backbone,
        num_labels=num_labels,
        **upernet,
        **spec,
    )


def _load_vmamba_strict(folder: Path, config: UperNetConfig, state_dict: dict) -> MineNetCDForChangeDetection:
    """Build the VMamba MineNetCD from ``config`` and load every tensor; any missing or extra key is an error."""
    model = MineNetCDForChangeDetection(config)
    expected = model.state_dict()
    mismatched = [k for k, v in expected.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{folder}: the checkpoint does not match the MineNetCD VMamba layout built from its config.json "
            f"(missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}, mismatched {mismatched[:5]}; "
            f"{len(missing)}/{len(unexpected)}/{len(mismatched)} in all); refusing to run with random weights"
        )
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def load_legacy_minenetcd(folder: Path, **kwargs) -> MineNetCDForChangeDetection:
    """Load a published MineNetCD checkpoint (transformers-4.3x ``UperNetForSemanticSegmentation`` folder).

    The published checkpoints record no inference spec; they were trained on 8-bit RGB 256² chips normalised with the
    ADE/ImageNet mean and std, which are the defaults.
    """
    folder = Path(folder)
    cfg = read_config(folder)
    state_dict = read_state_dict(folder)
    config = legacy_minenetcd_config(cfg, state_dict, source=str(folder / "config.json"))
    if cfg["Backbone_type"] in VMAMBA_BACKBONES:
        model = _load_vmamba_strict(folder, config, state_dict)
        model.config.maskcd_architecture = "minenetcd"
        return model
    del state_dict
    model, info = MineNetCDForChangeDetection.from_pretrained(folder, config=config, output_loading_info=True, **kwargs)
    missing = [k for k in info["missing_keys"] if "relative_position_index" not in k]
    if missing or info.get("mismatched_keys"):
        raise CheckpointError(
            f"{folder}: the checkpoint does not match the MineNetCD layout built from its config.json "
            f"(missing {missing[:5]}, mismatched {list(info.get('mismatched_keys') or [])[:5]})"
        )
    model.config.maskcd_architecture = "minenetcd"
    return model


register_architecture("minenetcd", MineNetCDForChangeDetection, build_minenetcd_config)
register_legacy_loader(
    "MineNetCD (transformers 4.3x UperNet + ChangeFFT)", _is_legacy_minenetcd, load_legacy_minenetcd,
    format="legacy-minenetcd",
)
