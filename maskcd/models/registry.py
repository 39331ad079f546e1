"""Model registry: architectures (code) and presets (YAML files in ``maskcd/configs/models/``).

* An **architecture** is a config class + model class registered with :func:`register_architecture`.
* A **preset** is a YAML file ``maskcd/configs/models/<name>.yaml``::

      architecture: maskcd          # a registered architecture
      description: one line for maskcd-models
      config: {...}                 # keyword arguments of the architecture's config builder

* A **task alias** (``maskcd/configs/aliases.yaml``: ``mining``, ``buildings``, ``landslides``, ``cropland``,
  ``urban``) names the best published checkpoint (a Hub id) for that job; :func:`task_aliases` lists them.
* :func:`load_model` accepts a preset name, a task alias, a folder saved by maskcd, a folder in a published legacy
  format (detected by registered *legacy loaders*) or a Hub id.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from maskcd.errors import ConfigError, ModelNotFoundError
from maskcd.models.weights_io import checkpoint_errors, read_config, require_weights

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


_ARCHITECTURES: dict[str, Architecture] = {}
# (predicate on a config.json dict, loader(folder) -> model), tried in order for folders without maskcd_architecture
_LEGACY_LOADERS: list[tuple[str, Callable[[dict], bool], Callable[[Path], object]]] = []


def register_architecture(name: str, model_cls: type, build_config: Callable[..., object]) -> None:
    _ARCHITECTURES[name] = Architecture(name, model_cls, build_config)
    model_cls.maskcd_architecture = name


def register_legacy_loader(name: str, matches: Callable[[dict], bool], loader: Callable[[Path], object]) -> None:
    """Register a loader for a published checkpoint layout that maskcd did not write itself."""
    _LEGACY_LOADERS.append((name, matches, loader))


def _ensure_registered() -> None:
    # importing the model modules registers them
    from maskcd.models import _all  # noqa: F401


def architectures() -> dict[str, Architecture]:
    _ensure_registered()
    return dict(_ARCHITECTURES)


@lru_cache(maxsize=None)
def _read_preset(path: str) -> dict:
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if "architecture" not in data:
        raise ConfigError(f"preset file {path} has no 'architecture' key: add the name of a registered architecture")
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
    archs = architectures()
    arch = archs.get(info["architecture"])
    if arch is None:
        raise ConfigError(f"preset {name!r} names unknown architecture {info['architecture']!r}; known: {sorted(archs)}")
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
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    return tuple(TaskAlias(name, entry["hub_id"], entry.get("source", "")) for name, entry in data.items())


def task_aliases() -> dict[str, TaskAlias]:
    """``{alias: TaskAlias}`` from ``aliases.yaml`` in :func:`config_dir` (empty when the file is absent)."""
    path = config_dir() / "aliases.yaml"
    if not path.is_file():
        return {}
    return {a.name: a for a in _read_aliases(str(path))}


def _is_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(
            snapshot_download(
                repo_id, allow_patterns=["config.json", "*.safetensors", "*.bin", "*.json", "*.yaml"]
            )
        )
    except LocalEntryNotFoundError as err:
        raise ModelNotFoundError(
            f"model {repo_id!r} is not in the local Hugging Face cache and the Hub cannot be reached "
            f"(offline or HF_HUB_OFFLINE=1): pass a local folder with its config.json and weights instead "
            f"(fetch it once on a connected machine with `hf download {repo_id} --local-dir DIR`)"
        ) from err
    except RepositoryNotFoundError as err:
        raise ModelNotFoundError(f"no Hub repository {repo_id!r}; pass a preset, a local folder or a valid id") from err


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
    them.
    """
    return own_storage(_load_model(name_or_path, **kwargs))


def _load_model(name_or_path: str | os.PathLike, **kwargs):
    _ensure_registered()
    text = str(name_or_path)
    if text in _presets():
        return build_model(text, **kwargs)
    alias = task_aliases().get(text)
    if alias is not None and not Path(text).exists():
        logger.info("task alias %r -> %s", text, alias.hub_id)
        text = alias.hub_id
    folder = Path(text).expanduser()
    if not folder.exists():
        if not _is_hub_id(text):
            raise ModelNotFoundError(
                f"model {text!r} is neither a preset ({', '.join(list_models())}), a task alias "
                f"({', '.join(task_aliases())}), an existing folder, nor a Hub id (owner/name)"
            )
        folder = _download(text)
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise ModelNotFoundError(f"{folder} is not a model folder: it needs a config.json next to the weights")
    cfg = read_config(folder)
    arch_name = cfg.get("maskcd_architecture")
    if arch_name:
        arch = _ARCHITECTURES.get(arch_name)
        if arch is None:
            raise ModelNotFoundError(f"{folder}: unknown maskcd_architecture {arch_name!r}; known: {sorted(_ARCHITECTURES)}")
        require_weights(folder)  # a missing weights file is one line, not transformers' OSError
        with checkpoint_errors(folder):
            return arch.model_cls.from_pretrained(folder, **kwargs)
    for name, matches, loader in _LEGACY_LOADERS:
        if matches(cfg):
            logger.info("loading %s as a published %s checkpoint", folder, name)
            with checkpoint_errors(folder):
                return loader(folder, **kwargs)
    raise ModelNotFoundError(
        f"{folder}/config.json is neither a maskcd checkpoint nor a known published format "
        f"({', '.join(n for n, _, _ in _LEGACY_LOADERS)})"
    )


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
