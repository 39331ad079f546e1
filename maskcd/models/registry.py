"""Model registry: architectures (code) and presets (YAML files in ``maskcd/configs/models/``).

* An **architecture** is a config class + model class registered with :func:`register_architecture`.
* A **preset** is a YAML file ``maskcd/configs/models/<name>.yaml``::

      architecture: maskcd          # a registered architecture
      description: one line for maskcd-models
      config: {...}                 # keyword arguments of the architecture's config builder

* A **task alias** (``maskcd/configs/aliases.yaml``: ``mining``, ``buildings``, ``landslides``, ``cropland``,
  ``urban``) names the best published checkpoint (a Hub id) for that job; :func:`task_aliases` lists them.
* :func:`load_model` accepts a preset name, a task alias, a folder saved by maskcd, a folder in a published legacy
  format (detected by registered *legacy loaders*) or a Hub id; :func:`maskcd.models.reference.resolve_model` is the
  one place that works out what such a reference names.

Architectures are found lazily, as transformers' auto classes do: :data:`ARCHITECTURE_MODULES` maps each name to the
module that registers it on import, so building or loading one model imports only that model's module, and
:func:`list_models` reads the preset YAML files without importing any model module.
A new model module registers itself with :func:`register_architecture` and adds its line to the table.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from maskcd.errors import ConfigError, ModelNotFoundError
from maskcd.models.weights_io import checkpoint_errors, read_config, require_weights
from maskcd.options import read_yaml

logger = logging.getLogger(__name__)

CONFIG_DIR_ENV = "MASKCD_CONFIG_DIR"


def config_dir() -> Path:
    """The folder holding ``models/*.yaml`` presets and ``map.yaml``.

    ``$MASKCD_CONFIG_DIR`` when set, else ``maskcd/configs`` inside the installed package (read through
    :mod:`importlib.resources`, so a wheel installed anywhere finds them, not only an editable checkout).
    """
    if os.environ.get(CONFIG_DIR_ENV):
        return Path(os.environ[CONFIG_DIR_ENV])
    return Path(str(resources.files("maskcd") / "configs"))


@dataclass(frozen=True)
class Architecture:
    """A registered model family.

    Args:
        name: Registry key stored in saved configs as ``maskcd_architecture``.
        model_cls: The ``PreTrainedModel`` subclass.
        build_config: Callable turning a preset's ``config`` mapping (plus overrides) into a config instance; it must
            raise :class:`~maskcd.errors.ConfigError` naming the valid keys for an unknown key.
    """

    name: str
    model_cls: type
    build_config: Callable[..., object]


#: Architecture name -> the module that registers it (with :func:`register_architecture`) when imported.
ARCHITECTURE_MODULES: dict[str, str] = {
    "maskcd": "maskcd.models.maskcd",
    "minenetcd": "maskcd.models.minenetcd",
    "fc-ef": "maskcd.models.zoo.fc_ef",
    "siamunet-conc": "maskcd.models.zoo.siamunet_conc",
    "siamunet-diff": "maskcd.models.zoo.siamunet_diff",
    "snunet": "maskcd.models.zoo.snunet",
    "bit": "maskcd.models.zoo.bit",
    "changeformer": "maskcd.models.zoo.changeformer",
    "a2net": "maskcd.models.zoo.a2net",
    "tinycd": "maskcd.models.zoo.tinycd",
    "dminet": "maskcd.models.zoo.dminet",
    "mspsnet": "maskcd.models.zoo.mspsnet",
    "resunet": "maskcd.models.zoo.resunet",
    "cgnet": "maskcd.models.zoo.cgnet",
    "hcgmnet": "maskcd.models.zoo.hcgmnet",
    "rdpnet": "maskcd.models.zoo.rdpnet",
    "fcnpp": "maskcd.models.zoo.fcnpp",
    "dtcdscn": "maskcd.models.zoo.dtcdscn",
    "tfi-gr": "maskcd.models.zoo.tfi_gr",
    "afcf3d": "maskcd.models.zoo.afcf3d",
    "icifnet": "maskcd.models.zoo.icifnet",
    "ussfcnet": "maskcd.models.zoo.ussfcnet",
    "dsamnet": "maskcd.models.zoo.dsamnet",
    "dsifn": "maskcd.models.zoo.dsifn",
    "aernet": "maskcd.models.zoo.aernet",
    "hanet": "maskcd.models.zoo.hanet",
    "swinsunet": "maskcd.models.zoo.swinsunet",
}
#: Modules that register a loader for a published checkpoint layout (:func:`register_legacy_loader`), in the order
#: their loaders are tried.
LEGACY_LOADER_MODULES: tuple[str, ...] = ("maskcd.models.maskcd", "maskcd.models.minenetcd", "maskcd.models.ucd")


@dataclass(frozen=True)
class LegacyLoader:
    """A loader for a published checkpoint layout that maskcd did not write itself.

    Args:
        name: Human-readable name of the layout, used in messages.
        matches: Predicate on the folder's ``config.json`` dict.
        loader: ``loader(folder, **kwargs) -> model``.
        format: Short format name recorded in :class:`maskcd.models.reference.ModelRef` (``legacy-maskcd`` ...).
    """

    name: str
    matches: Callable[[dict], bool]
    loader: Callable[..., object]
    format: str


_ARCHITECTURES: dict[str, Architecture] = {}
# tried in order for folders without maskcd_architecture
_LEGACY_LOADERS: list[LegacyLoader] = []


def register_architecture(name: str, model_cls: type, build_config: Callable[..., object]) -> None:
    _ARCHITECTURES[name] = Architecture(name, model_cls, build_config)
    model_cls.maskcd_architecture = name


def register_legacy_loader(
    name: str, matches: Callable[[dict], bool], loader: Callable[[Path], object], format: str = "legacy"
) -> None:
    """Register a loader for a published checkpoint layout that maskcd did not write itself."""
    if any(entry.name == name for entry in _LEGACY_LOADERS):
        return
    _LEGACY_LOADERS.append(LegacyLoader(name, matches, loader, format))


def architecture(name: str) -> Architecture | None:
    """The architecture registered as ``name``, importing only the module that registers it; None when unknown."""
    if name not in _ARCHITECTURES and name in ARCHITECTURE_MODULES:
        importlib.import_module(ARCHITECTURE_MODULES[name])
    return _ARCHITECTURES.get(name)


def known_architectures() -> list[str]:
    """Names of every architecture, registered or registrable, without importing any model module."""
    return sorted({*ARCHITECTURE_MODULES, *_ARCHITECTURES})


def architectures() -> dict[str, Architecture]:
    """Every architecture (imports every model module of :data:`ARCHITECTURE_MODULES`)."""
    for module in ARCHITECTURE_MODULES.values():
        importlib.import_module(module)
    return dict(_ARCHITECTURES)


def legacy_loaders() -> list[LegacyLoader]:
    """Every registered legacy loader, in the order they are tried (imports :data:`LEGACY_LOADER_MODULES`)."""
    for module in LEGACY_LOADER_MODULES:
        importlib.import_module(module)
    return list(_LEGACY_LOADERS)


@lru_cache(maxsize=None)
def _read_preset(path: str) -> dict:
    data = read_yaml(path, what="preset file")
    if "architecture" not in data:
        raise ConfigError(f"preset file {path} has no 'architecture' key: add the name of a registered architecture")
    if not isinstance(data.get("config") or {}, dict):
        raise ConfigError(f"preset file {path}: 'config' must be a mapping of config keys, not "
                          f"{type(data['config']).__name__}")
    return data


def _presets() -> dict[str, dict]:
    folder = config_dir() / "models"
    return {p.stem: _read_preset(str(p)) for p in sorted(folder.glob("*.yaml"))}


def list_models() -> list[str]:
    """Names of every registered preset, sorted."""
    return sorted(_presets())


def preset_info(name: str) -> dict:
    presets = _presets()
    if name not in presets:
        raise ModelNotFoundError(f"unknown model {name!r}; valid names: {', '.join(sorted(presets))}")
    return presets[name]


def build_model(name: str, **overrides):
    """Build a registered preset with random weights.

    Args:
        name: Preset name (see :func:`list_models`).
        **overrides: Config keys to override (e.g. ``num_labels=2``); an unknown key raises
            :class:`~maskcd.errors.ConfigError` listing the valid ones.
    """
    info = preset_info(name)
    arch = architecture(info["architecture"])
    if arch is None:
        raise ConfigError(
            f"preset {name!r} names unknown architecture {info['architecture']!r}; known: {known_architectures()}"
        )
    config = arch.build_config(**{**(info.get("config") or {}), **overrides})
    config.maskcd_architecture = arch.name
    config.maskcd_preset = name
    return arch.model_cls(config)


@dataclass(frozen=True)
class TaskAlias:
    """A task alias: the published checkpoint chosen for a job and the result-table row the choice rests on."""

    name: str
    hub_id: str
    source: str


@lru_cache(maxsize=None)
def _read_aliases(path: str) -> tuple[TaskAlias, ...]:
    data = read_yaml(path, what="task alias file")
    bad = [name for name, entry in data.items() if not isinstance(entry, dict) or "hub_id" not in entry]
    if bad:
        raise ConfigError(f"task alias file {path}: alias {bad[0]!r} needs a 'hub_id' entry: add one")
    return tuple(TaskAlias(name, entry["hub_id"], entry.get("source", "")) for name, entry in data.items())


def task_aliases() -> dict[str, TaskAlias]:
    """``{alias: TaskAlias}`` from ``aliases.yaml`` in :func:`config_dir` (empty when the file is absent)."""
    path = config_dir() / "aliases.yaml"
    if not path.is_file():
        return {}
    return {a.name: a for a in _read_aliases(str(path))}




def own_storage(model):
    """Move every parameter and buffer of ``model`` into fresh, contiguous, allocator-owned storage (in place).

    ``from_pretrained`` (transformers 5) and safetensors leave loaded tensors as views into the memory-mapped file, at
    whatever offset the file layout gives them: most are not 64-byte aligned and all share one file-backed storage.
    CPU kernels (MKL GEMM, oneDNN, vectorised reductions) may take other code paths for such tensors, so the same
    weights could give outputs that differ in the last bits from a model whose weights were built in memory, and from
    run to run depending on the heap. Copying once at load time makes a loaded model compute exactly like the model
    that was saved, frees the file mapping, and costs one copy of the weights.
    """
    import torch

    with torch.no_grad():
        for module in model.modules():
            for name, param in list(module._parameters.items()):
                if param is not None:
                    param.data = param.data.clone(memory_format=torch.contiguous_format)
            for name, buf in list(module._buffers.items()):
                if buf is not None:
                    module._buffers[name] = buf.clone(memory_format=torch.contiguous_format)
    return model


def load_model(name_or_path: str | os.PathLike, **kwargs):
    """Load a model from a preset name, a task alias, a local folder (maskcd or published legacy format) or a Hub id.

    Weights are read from safetensors, or from pickles with ``torch.load(weights_only=True)`` only; a bad
    ``config.json`` or weights file raises :class:`~maskcd.errors.CheckpointError` (see
    :mod:`maskcd.models.weights_io`, which legacy loaders use to read their files). Loaded weights are copied into
    fresh allocator-owned storage (:func:`own_storage`), so that outputs do not depend on where the file mapping put
    them. The returned model carries the resolved reference
    (:class:`maskcd.models.reference.ModelRef`) as ``model.maskcd_ref``.
    """
    from maskcd.models.reference import resolve_model

    ref = resolve_model(name_or_path)
    model = own_storage(_load_model(ref, **kwargs))
    model.maskcd_ref = ref  # what it was loaded from: the run metadata records ref.sha256
    return model


def _load_model(ref, **kwargs):
    if ref.kind == "preset":
        return build_model(ref.id, **kwargs)
    folder = ref.path
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"{folder} is not a model folder: it needs a config.json next to the weights")
    cfg = read_config(folder)
    arch_name = cfg.get("maskcd_architecture")
    if arch_name:
        arch = architecture(arch_name)
        if arch is None:
            raise ModelNotFoundError(
                f"{folder}: unknown maskcd_architecture {arch_name!r}; known: {known_architectures()}"
            )
        require_weights(folder)  # a missing weights file is one line, not transformers' OSError
        with checkpoint_errors(folder):
            return arch.model_cls.from_pretrained(folder, **kwargs)
    for entry in legacy_loaders():
        if entry.matches(cfg):
            logger.info("loading %s as a published %s checkpoint", folder, entry.name)
            with checkpoint_errors(folder):
                return entry.loader(folder, **kwargs)
    raise ModelNotFoundError(
        f"{folder}/config.json is neither a maskcd checkpoint nor a known published format "
        f"({', '.join(entry.name for entry in legacy_loaders())})"
    )


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
