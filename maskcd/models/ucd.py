"""Checkpoints of the UCD framework (``EricYu97/UCD``, the ``HZDR-FWGEL/UCD-<DATASET>-<Method>`` Hub models).

A UCD checkpoint folder holds

* ``config.json``: UCD's YAML training config as JSON (``model_name``, ``input_nc``, ``num_classes``, ``train.loss``,
  ``transform``, ...);
* ``model.safetensors`` (or ``pytorch_model.bin``): the state dict of UCD's ``Change_Detection_Framework``, whose only
  tensors are those of the network, stored as attribute ``CD_model``: keys ``CD_model.<...>``, or
  ``CD_model.module.<...>`` for runs on several GPUs (the network is then wrapped by DistributedDataParallel).

:func:`load_ucd_checkpoint` (registered as a legacy loader, so :func:`maskcd.models.load_model` accepts such a folder
or Hub id) maps ``model_name`` to our preset (:data:`UCD_PRESETS`), builds it with the checkpoint's ``input_nc`` and
``num_classes``, renames the original parameter names to ours (:data:`_KEY_RULES`, per method; identity where our
module uses the original layout) and loads strictly: every tensor must be used and every shape must fit, otherwise one
:class:`UCDCheckpointError` line names the first keys that do not.

Inputs and outputs as UCD has them:

* UCD feeds ``ToTensor()`` values (0-1, no mean/std), except configs whose ``transform`` list holds ``"normalize"``
  (only MineNetCD's), which also subtract/divide by the ADE20K mean/std. The loaded model's :class:`InferenceSpec`
  records exactly that, so ``maskcd-map`` and ``maskcd-test`` feed what the model was trained on.
* UCD decides the change map by the channel count of ``main_predictions``: one channel, ``p > 0.5`` on the output as
  it is (a sigmoid probability, our ``sigmoid(z) > 0.5``); otherwise softmax then argmax (our ``softmax[:, 1] > 0.5``
  for two classes). :func:`ucd_main_predictions` returns our model's output in UCD's form (sigmoid probabilities,
  log-softmax for FC-EF and the Siamese U-Nets, raw logits otherwise) for comparisons.

A model loaded this way is an ordinary maskcd model: ``save_pretrained`` writes our own format, which reloads
bit for bit.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import torch

from maskcd.models.base import InferenceSpec, set_inference_spec
from maskcd.models.registry import ModelNotFoundError, build_model, register_legacy_loader

logger = logging.getLogger(__name__)

# UCD ``model_name`` (exact spelling of UCD's registry, ``models/__init__.py``) -> maskcd preset.
# One entry per line, sorted, so that additions merge cleanly.
UCD_PRESETS: dict[str, str] = {
    "A2Net": "a2net",
    "AERNet": "aernet",
    "AFCF3D": "afcf3d",
    "BIT": "bit",
    "CGNet": "cgnet",
    "ChangeFormer": "changeformer",
    "DMINet": "dminet",
    "DSAMNet": "dsamnet",
    "DSIFN": "dsifn",
    "DTCDSCN": "dtcdscn",
    "FC-EF": "fc-ef",
    "FCNPP": "fcnpp",
    "HANet": "hanet",
    "HCGMNet": "hcgmnet",
    "ICIFNet": "icifnet",
    "MSPSNet": "mspsnet",
    "MineNetCD": "minenetcd-swin-t",
    "RDPNet": "rdpnet",
    "ResUnet": "resunet",
    "SNUNet": "snunet",
    "SiamUnet_diff": "siamunet-diff",
    "SwinSUnet": "swinsunet",
    "TFI_GR": "tfi-gr",
    "Tiny_CD": "tinycd",
    "USSFCNet": "ussfcnet",
    "siamunet_conc": "siamunet-conc",
}

# UCD methods whose ``main_predictions`` are log-softmax values (``nn.LogSoftmax`` inside the network).
UCD_LOG_SOFTMAX: set[str] = {
    "FC-EF",
    "SiamUnet_diff",
    "SwinSUnet",
    "siamunet_conc",
}

# One-channel UCD methods whose ``main_predictions`` are raw logits that UCD still thresholds at 0.5 (no sigmoid).
UCD_RAW_ONE_CHANNEL: set[str] = {
    "AERNet",
}

# ADE20K mean/std (``transform: [normalize]`` in UCD's MineNetCD config), on the 0-1 scale.
ADE_MEAN = (123.675 / 255, 116.280 / 255, 103.530 / 255)
ADE_STD = (58.395 / 255, 57.120 / 255, 57.375 / 255)

_PREFIXES = ("CD_model.module.", "CD_model.")


class UCDCheckpointError(ModelNotFoundError):
    """A UCD checkpoint folder that maskcd cannot load (unknown ``model_name``, tensors that do not fit)."""


# ----------------------------------------------------------------------------------------- key renaming

# Per UCD model_name: ordered ``(regex, replacement)`` rules applied with ``re.sub`` to each original key (after the
# ``CD_model.`` prefix is stripped); methods without an entry use the original names as they are.
_DAUDT_DEPTHS = (2, 2, 3, 3)
# Daudt et al.'s U-Nets name every layer (conv<level><unit>, bn.., upconv<level>, ...d in the decoder); ours are
# maskcd.models.zoo._daudt's Encoder/Decoder.levels[i][unit] = (conv, bn, relu, dropout).
_DAUDT_RULES = [
    (r"^conv(\d)(\d)\.", lambda m: f"encoder.levels.{int(m[1]) - 1}.{int(m[2]) - 1}.0."),
    (r"^bn(\d)(\d)\.", lambda m: f"encoder.levels.{int(m[1]) - 1}.{int(m[2]) - 1}.1."),
    (r"^upconv(\d)\.", lambda m: f"decoder.upconvs.{4 - int(m[1])}."),
    (r"^conv11d\.", "decoder.levels.3.1."),  # the final projection: a bare transposed conv
    (r"^conv(\d)(\d)d\.", lambda m: f"decoder.levels.{4 - int(m[1])}.{_DAUDT_DEPTHS[int(m[1]) - 1] - int(m[2])}.0."),
    (r"^bn(\d)(\d)d\.", lambda m: f"decoder.levels.{4 - int(m[1])}.{_DAUDT_DEPTHS[int(m[1]) - 1] - int(m[2])}.1."),
]

# CGNet and HCGMNet (same authors) share the VGG16-BN encoder split into inc/down1-4 and BasicConv2d(conv, bn) blocks.
_CGM_COMMON = [
    (r"^inc\.", "encoder.0."),
    (r"^down(\d)\.", r"encoder.\1."),
    (r"^conv_reduce_(\d)\.", lambda m: f"conv_reduce.{int(m[1]) - 1}."),
    (r"^cgm_(\d)\.", lambda m: f"cgm.{int(m[1]) - 2}."),
]
_CONV_BN = [(r"\.conv\.", ".0."), (r"\.bn\.", ".1.")]



def _a2net_scale(m: re.Match) -> str:
    # swa.conv_scale<S>_c<c>: level c resampled to scale S; the lower level goes through a max-pool first (index 0)
    scale, level, index = int(m[1]), int(m[2]), int(m[3])
    i = level - max(2, scale - 1)
    if level == scale - 1:
        return f"aggregation.s{scale}.{i}.1.{index - 1}."
    return f"aggregation.s{scale}.{i}.0.{index}."


_KEY_RULES: dict[str, list[tuple[str, str | Callable[[re.Match], str]]]] = {
    "A2Net": [
        (r"^swa\.conv_scale(\d)_c(\d)\.(\d)\.", _a2net_scale),
        (r"^swa\.conv_aggregation_s(\d)\.conv_fuse\.(\d)\.",
         lambda m: f"aggregation.f{m[1]}.conv_fuse.{ {'0': '0.0', '1': '0.1', '3': '1', '4': '2'}[m[2]] }."),
        (r"^swa\.conv_aggregation_s(\d)\.conv_identity\.", r"aggregation.f\1.conv_identity."),
        (r"^tfm\.tffm_x(\d)\.conv_", lambda m: f"temporal.{int(m[1]) - 2}."),
        (r"^decoder\.sam_p(\d)\.", lambda m: f"sam.{5 - int(m[1])}."),
        (r"^decoder\.conv_p(\d)\.", lambda m: f"conv_p.{4 - int(m[1])}."),
        (r"^decoder\.cls\.", "cls."),
    ],
    "CGNet": _CGM_COMMON + [
        (r"^up_layer(\d)\.", lambda m: f"unused.{4 - int(m[1])}."),  # built but never called
    ] + _CONV_BN,
    "HCGMNet": _CGM_COMMON + [
        (r"^up_layer(\d)\.", lambda m: f"up_layers.{int(m[1]) - 2}."),
        (r"^deocde", "decode"),
    ] + _CONV_BN,
    "ChangeFormer": [
        (r"^Tenc_x2\.patch_embed(\d)\.", lambda m: f"encoder.patch_embeds.{int(m[1]) - 1}."),
        (r"^Tenc_x2\.block(\d)\.", lambda m: f"encoder.stages.{int(m[1]) - 1}."),
        (r"^Tenc_x2\.norm(\d)\.", lambda m: f"encoder.norms.{int(m[1]) - 1}."),
        (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
        (r"^TDec_x2\.linear_c(\d)\.proj\.", lambda m: f"decoder.linear.{int(m[1]) - 1}."),
        (r"^TDec_x2\.diff_c(\d)\.", lambda m: f"decoder.diff.{int(m[1]) - 1}."),
        (r"^TDec_x2\.make_pred_c(\d)\.", lambda m: f"decoder.pred.{int(m[1]) - 1}."),
        (r"^TDec_x2\.(dense_[12]x)\.0\.(conv[12])\.conv2d\.", r"decoder.\1.\2."),
        (r"^TDec_x2\.(\w+)\.conv2d\.", r"decoder.\1."),
        (r"^TDec_x2\.", "decoder."),
    ],
    "DMINet": [
        (r"^cross(\d)\.", lambda m: f"cross.{int(m[1]) - 2}."),
        (r"^Translayer(\d)_(\d)\.conv\.", lambda m: f"trans_{('sum', 'diff')[int(m[2]) - 1]}.{int(m[1]) - 2}.0."),
        (r"^Translayer(\d)_(\d)\.bn\.", lambda m: f"trans_{('sum', 'diff')[int(m[2]) - 1]}.{int(m[1]) - 2}.1."),
        (r"^fam(32|43)_(\d)\.", lambda m: f"agg_{('sum', 'diff')[int(m[2]) - 1]}.{('32', '43').index(m[1])}."),
        (r"^(final|final2|final_2|final2_2)\.", lambda m: {"final": "head_sum.", "final2": "head_diff.",
                                                            "final_2": "head_sum_8.", "final2_2": "head_diff_8."}[m[1]]),
        (r"^(head_\w+)\.0\.conv\.", r"\1.0."),
        (r"^(head_\w+)\.0\.bn\.", r"\1.1."),
        (r"^(head_\w+)\.1\.conv\.", r"\1.3."),
    ],
    "FC-EF": _DAUDT_RULES,
    "siamunet_conc": _DAUDT_RULES,
    "SiamUnet_diff": _DAUDT_RULES,
    "BIT": [
        (r"^transformer\.layers\.", "encoder."),
        (r"^transformer_decoder\.layers\.", "decoder."),
        (r"^(encoder|decoder)\.(\d+)\.0\.fn\.norm\.", r"\1.\2.norm1."),
        (r"^(encoder|decoder)\.(\d+)\.0\.fn\.fn\.to_out\.0\.", r"\1.\2.attn.to_out."),
        (r"^(encoder|decoder)\.(\d+)\.0\.fn\.fn\.", r"\1.\2.attn."),
        (r"^(encoder|decoder)\.(\d+)\.1\.fn\.norm\.", r"\1.\2.norm2."),
        (r"^(encoder|decoder)\.(\d+)\.1\.fn\.fn\.net\.0\.", r"\1.\2.ff.0."),
        (r"^(encoder|decoder)\.(\d+)\.1\.fn\.fn\.net\.3\.", r"\1.\2.ff.2."),
    ],
    "MSPSNet": [
        (r"^conv0_0\.", "stem."),
        (r"^conv([0245])\.", lambda m: f"cells.{'0245'.index(m[1])}."),
        (r"^conv6_(\d)_(\d)\.", lambda m: f"fusion.{int(m[1]) - 1}.branches.{int(m[2]) - 1}."),
        (r"^conv(\d)_1\.", lambda m: f"fusion.{int(m[1]) - 1}.fuse."),
        (r"^cam_attention_(\d)\.attn\.", lambda m: f"fusion.{int(m[1]) - 1}.cam."),
        (r"^c(\d)_conv\.", lambda m: f"unused.{4 - int(m[1])}."),  # built but never called
    ],
    "ResUnet": [
        (r"^input_skip\.0\.", "input_skip."),
        (r"^residual_conv_(\d)\.", lambda m: f"down.{int(m[1]) - 1}."),
        (r"^upsample_(\d)\.upsample\.", lambda m: f"upsample.{int(m[1]) - 1}."),
        (r"^up_residual_conv5\.", "last_unit."),
        (r"^up_residual_conv(\d)\.", lambda m: f"up_units.{int(m[1]) - 1}."),
        (r"^output_layer\.0\.", "output_layer."),
    ],
    "Tiny_CD": [
        (r"^_mixing_mask\.2\._convmix\.", "last_mix.convmix."),
        (r"\._linears\.", "."),
        (r"(^|\.)_", r"\1"),
    ],
    "SNUNet": [
        (r"^Up(\d)_(\d)\.up\.", r"up\1_\2."),
    ],
}

# Per UCD model_name: a function renaming a whole state dict (for layouts a per-key rule cannot express).
_STATE_CONVERTERS: dict[str, Callable[[dict[str, torch.Tensor], torch.nn.Module], dict[str, torch.Tensor]]] = {}


def _minenetcd_state(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """UCD's MineNetCD is transformers' ``UperNetForSemanticSegmentation`` plus ``channel_mixing``/``norm``, the layout
    of :class:`~maskcd.models.minenetcd.MineNetCDForChangeDetection`. Keys of the transformers 4.x Swin written by
    UCD's pinned transformers are renamed with transformers' own conversion mapping; the Swin classifier's final
    LayerNorm (``backbone.swin.layernorm``, present when written by transformers 5) is never called by UperNet and is
    dropped (our backbone replaces it by an identity)."""
    from maskcd.models.convert import legacy_key_mapping

    mapping = legacy_key_mapping(model, list(state))
    return {mapping[k]: v for k, v in state.items() if not mapping[k].startswith("backbone.swin.layernorm.")}


_STATE_CONVERTERS["MineNetCD"] = _minenetcd_state


def rename_key(model_name: str, key: str) -> str:
    """Our parameter name for the original UCD parameter ``key`` of ``model_name``."""
    for pattern, repl in _KEY_RULES.get(model_name, ()):
        key = re.sub(pattern, repl, key)
    return key


def to_our_state_dict(model_name: str, state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The original (prefix-free) UCD state dict of ``model_name`` under our parameter names."""
    converter = _STATE_CONVERTERS.get(model_name)
    if converter is not None:
        return converter(state, model)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = rename_key(model_name, key)
        if new in out:
            raise UCDCheckpointError(f"UCD {model_name}: keys map onto the same parameter {new!r}")
        out[new] = value
    return out


# ----------------------------------------------------------------------------------------- detection and loading


def is_ucd_config(cfg: dict) -> bool:
    """True for a UCD config.json (the YAML training config: ``model_name``, ``input_nc``, ``num_classes``)."""
    return (
        isinstance(cfg, dict)
        and "maskcd_architecture" not in cfg
        and isinstance(cfg.get("model_name"), str)
        and "input_nc" in cfg
        and "num_classes" in cfg
    )


def _read_tensors(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The checkpoint's tensors, read by :func:`maskcd.models.weights_io.read_state_dict` (safetensors, or a pickle
    with ``weights_only=True``; one-line errors for missing, truncated or code-carrying files), with the shared
    tensors that safetensors' ``save_model`` dropped re-added from its ``{dropped name: kept name}`` metadata."""
    from maskcd.models.weights_io import read_state_dict, weight_file

    path = weight_file(folder)
    tensors = read_state_dict(path)
    if not isinstance(tensors, dict):
        raise UCDCheckpointError(f"{path}: holds a {type(tensors).__name__}, not a state dict")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        for dropped, kept in metadata.items():
            if dropped not in tensors and kept in tensors:
                tensors[dropped] = tensors[kept]
    return tensors, path


def strip_prefix(tensors: dict[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], str]:
    """Remove UCD's ``CD_model.`` (or multi-GPU ``CD_model.module.``) prefix; returns the state and the prefix."""
    for prefix in _PREFIXES:
        if tensors and all(k.startswith(prefix) for k in tensors):
            return {k[len(prefix):]: v for k, v in tensors.items()}, prefix
    stray = sorted(k for k in tensors if not k.startswith("CD_model."))[:3]
    raise UCDCheckpointError(
        f"{source}: not a UCD state dict: keys must all start with 'CD_model.' (or 'CD_model.module.'); "
        f"found {stray or sorted(tensors)[:3]}"
    )


def _band_names(n: int) -> tuple[str, ...]:
    return ("red", "green", "blue") if n == 3 else tuple(f"band{i + 1}" for i in range(n))


def ucd_inference_spec(cfg: dict) -> InferenceSpec:
    """What UCD fed the network: 8-bit values / 255, then ADE mean/std only with ``transform: [normalize]``."""
    n = int(cfg.get("input_nc", 3))
    transforms = cfg.get("transform") or []
    if "normalize" in transforms:
        if n != 3:
            raise UCDCheckpointError(f"UCD config normalises with the RGB ADE mean/std but has input_nc {n}")
        mean, std = ADE_MEAN, ADE_STD
    else:
        mean, std = (0.0,) * n, (1.0,) * n
    return InferenceSpec(input_bands=_band_names(n), value_scale=255.0, image_mean=mean, image_std=std, tile_size=256)


def ucd_preset(model_name: str, source: str = "") -> str:
    """Our preset for UCD ``model_name``; a :class:`UCDCheckpointError` naming it when maskcd has none."""
    preset = UCD_PRESETS.get(model_name)
    if preset is None:
        raise UCDCheckpointError(
            f"{source + ': ' if source else ''}UCD model_name {model_name!r} is not implemented in maskcd; "
            f"implemented: {', '.join(sorted(UCD_PRESETS))}"
        )
    return preset


def _build(model_name: str, preset: str, cfg: dict, spec: InferenceSpec, source: str):
    num_classes = int(cfg["num_classes"])
    overrides: dict = {"input_bands": list(spec.input_bands), "image_mean": list(spec.image_mean),
                       "image_std": list(spec.image_std), "value_scale": spec.value_scale, "tile_size": spec.tile_size}
    if preset.startswith("minenetcd"):
        overrides["num_labels"] = num_classes
    elif num_classes != 2 and model_name not in _ONE_CHANNEL:
        raise UCDCheckpointError(f"{source}: UCD {model_name} with num_classes {num_classes}: maskcd's {preset} "
                                 f"predicts 2 classes (unchanged, changed) only")
    return build_model(preset, **overrides)


# UCD builds these with one sigmoid output whatever num_classes (models/__init__.py __sigmoid_model__ plus AFCF3D).
_ONE_CHANNEL = {"A2Net", "AERNet", "AFCF3D", "CGNet", "DSIFN", "FCNPP", "HCGMNet", "Tiny_CD", "USSFCNet"}


def check_state_dict(ours: dict[str, torch.Tensor], given: dict[str, torch.Tensor], source: str, what: str,
                     origin: dict[str, str] | None = None) -> None:
    """One :class:`UCDCheckpointError` line naming the first missing, unexpected or mis-shaped keys.

    ``origin`` maps our names to the checkpoint's own names, which the message then shows.
    """
    origin = origin or {}

    def name(key: str) -> str:
        return origin.get(key, key)

    missing = [k for k in ours if k not in given]
    unexpected = [name(k) for k in given if k not in ours]
    shapes = [f"{name(k)} {tuple(given[k].shape)} (expected {tuple(ours[k].shape)})"
              for k in ours if k in given and tuple(given[k].shape) != tuple(ours[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s) {missing[:3]} (maskcd names)")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s) {unexpected[:3]}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es) {shapes[:3]}")
        raise UCDCheckpointError(f"{source}: does not fit {what}: {'; '.join(parts)}")


def load_ucd_checkpoint(folder: str | Path, **kwargs):
    """Load a UCD checkpoint folder (see the module docstring) as the maskcd model of its method.

    Raises:
        UCDCheckpointError: unknown ``model_name``, unreadable weights, or tensors that do not fit (one line).
    """
    if kwargs:
        logger.debug("load_ucd_checkpoint ignores %s", sorted(kwargs))
    folder = Path(folder)
    config_path = folder / "config.json"
    with open(config_path) as f:
        cfg = json.load(f)
    model_name = cfg["model_name"]
    preset = ucd_preset(model_name, str(config_path))
    spec = ucd_inference_spec(cfg)
    tensors, weights = _read_tensors(folder)
    state, prefix = strip_prefix(tensors, str(weights))
    model = _build(model_name, preset, cfg, spec, str(config_path))
    ours = model.state_dict()
    mapped = to_our_state_dict(model_name, state, model)
    origin = {rename_key(model_name, k): prefix + k for k in state}
    check_state_dict(ours, mapped, str(weights), f"UCD {model_name} (maskcd preset {preset!r})", origin)
    model.load_state_dict({k: v.to(ours[k].dtype) for k, v in mapped.items()}, strict=True)
    if hasattr(model, "freeze_unused"):
        model.freeze_unused()
    set_inference_spec(model.config, spec)
    model.config.ucd_model_name = model_name
    model.config.ucd_dataset = cfg.get("dataset_name")
    model.config.ucd_loss = (cfg.get("train") or {}).get("loss") if isinstance(cfg.get("train"), dict) else None
    logger.info("loaded UCD %s (%s keys %s*) from %s as %s", model_name, len(state), prefix, folder, preset)
    return model.eval()


# ----------------------------------------------------------------------------------------- UCD's outputs


@torch.no_grad()
def ucd_main_predictions(model, image_a: torch.Tensor, image_b: torch.Tensor,
                         model_name: str | None = None) -> torch.Tensor:
    """Our model's output in the form of UCD's ``main_predictions`` for ``model_name`` (default: the one recorded
    when loading): sigmoid probabilities for one-channel methods (raw logits for :data:`UCD_RAW_ONE_CHANNEL`),
    log-softmax for :data:`UCD_LOG_SOFTMAX`, raw logits otherwise. Inputs must already be normalised."""
    name = model_name or getattr(model.config, "ucd_model_name", None)
    if hasattr(model, "predict"):  # zoo models: the raw network output
        h, w = image_a.shape[-2:]
        d = getattr(model, "size_divisor", 1)
        if h % d or w % d:
            raise ValueError(f"ucd_main_predictions needs sizes divisible by {d}, got {h}x{w}")
        logits = model.predict(image_a, image_b).logits
    else:
        logits = model(image_a, image_b).logits
    if logits.shape[1] == 1:
        return logits if name in UCD_RAW_ONE_CHANNEL else torch.sigmoid(logits)
    if name in UCD_LOG_SOFTMAX:
        return torch.log_softmax(logits, dim=1)
    return logits


def ucd_change_map(main_predictions: torch.Tensor) -> torch.Tensor:
    """UCD's rule (``testing_CD``): one channel ``p > 0.5``, otherwise argmax of the softmax; ``(B, H, W)`` int64."""
    if main_predictions.shape[1] == 1:
        return (main_predictions[:, 0] > 0.5).long()
    return main_predictions.softmax(dim=1).argmax(dim=1)


register_legacy_loader(
    "UCD (Change_Detection_Framework, HZDR-FWGEL/UCD-*)", is_ucd_config, load_ucd_checkpoint, format="ucd"
)
