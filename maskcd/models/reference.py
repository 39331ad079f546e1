"""One resolver for model references: what ``--model`` / :func:`~maskcd.models.load_model` names, and its hash.

A reference is one of

* a **preset** name (``maskcd/configs/models/<name>.yaml``: random weights of a registered architecture);
* a **task alias** (``maskcd/configs/aliases.yaml``: ``mining`` ...), which stands for its Hub id;
* a **folder** holding ``config.json`` and weights, saved by maskcd or in a published layout (MaskCD or MineNetCD on
  transformers 4.3x, UCD checkpoints of github.com/EricYu97/UCD);
* a **Hub id** ``owner/name``, fetched once into the Hugging Face cache (or found there when offline).

:func:`resolve_model` turns the text into a :class:`ModelRef`; :func:`~maskcd.models.load_model`, the batch manifest
(:func:`maskcd.batch.manifest.model_fingerprint`) and the run metadata of ``maskcd-map`` all use it, so a reference
means the same weights, with the same hash, everywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

from maskcd.models.registry import ModelNotFoundError, _presets, config_dir, list_models, task_aliases

logger = logging.getLogger(__name__)

ModelKind = Literal["preset", "alias", "folder", "hub"]

#: Files a Hub snapshot is fetched with.
HUB_PATTERNS = ["config.json", "*.safetensors", "*.bin", "*.json", "*.yaml"]
#: Files of a model folder that the hash covers: its config and every weight file.
HASHED_PATTERNS = ("config.json", "*.safetensors", "*.bin", "*.pt", "*.pth")


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference.

    Attributes:
        id: The reference as given (preset name, alias, folder path or Hub id).
        kind: ``preset``, ``alias``, ``folder`` or ``hub``.
        path: The preset's YAML file for a preset; else the local folder holding ``config.json`` and the weights
            (for an alias or a Hub id, the snapshot in the Hugging Face cache).
        hub_id: The Hub repository for ``alias`` and ``hub``; else None.

    :attr:`format` and :attr:`sha256` are worked out on first use (they read the folder) and then kept.
    """

    id: str
    kind: ModelKind
    path: Path
    hub_id: str | None = None

    @cached_property
    def format(self) -> str:
        """``preset``, ``maskcd`` (saved by maskcd), the published layout's format (``legacy-maskcd``,
        ``legacy-minenetcd``, ``ucd``) or ``unknown`` (no readable ``config.json``, or a layout no loader knows)."""
        if self.kind == "preset":
            return "preset"
        try:
            with open(self.path / "config.json") as f:
                cfg = json.load(f)
        except (OSError, ValueError):
            return "unknown"
        if not isinstance(cfg, dict):
            return "unknown"
        if cfg.get("maskcd_architecture"):
            return "maskcd"
        from maskcd.models.registry import legacy_loaders

        for entry in legacy_loaders():
            if entry.matches(cfg):
                return entry.format
        return "unknown"

    @cached_property
    def sha256(self) -> str:
        """SHA-256 identifying the weights: of the preset YAML for a preset (its weights are random, seeded by the
        caller), else over ``config.json`` and every weight file of the folder (name and content hash of each)."""
        if self.kind == "preset":
            return sha256_file(self.path)
        return hash_model_folder(self.path)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes, read in ``chunk``-byte blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_model_folder(folder: str | os.PathLike) -> str:
    """SHA-256 over the sorted ``config.json`` and weight files of ``folder`` (each file's name and content hash)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    files = sorted({p for pat in HASHED_PATTERNS for p in folder.glob(pat) if p.is_file()})
    for p in files:
        digest.update(p.name.encode())
        digest.update(sha256_file(p).encode())
    return digest.hexdigest()


def is_hub_id(text: str) -> bool:
    """Whether ``text`` has the shape of a Hub repository id ``owner/name`` (not a relative or absolute path)."""
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "/", "~"))


_SNAPSHOTS: dict[str, Path] = {}


def download(repo_id: str) -> Path:
    """The local snapshot folder of Hub repository ``repo_id``: fetched once per process, or found in the cache.

    Raises:
        ModelNotFoundError: Offline (or ``HF_HUB_OFFLINE=1``) and not cached, or no such repository; the message says
            what to pass instead.
    """
    if repo_id in _SNAPSHOTS:
        return _SNAPSHOTS[repo_id]
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        snap = Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except LocalEntryNotFoundError as err:
        raise ModelNotFoundError(
            f"model {repo_id!r} is not in the local Hugging Face cache and the Hub cannot be reached "
            f"(offline or HF_HUB_OFFLINE=1): pass a local folder with its config.json and weights instead "
            f"(fetch it once on a connected machine with `hf download {repo_id} --local-dir DIR`)"
        ) from err
    except RepositoryNotFoundError as err:
        raise ModelNotFoundError(f"no Hub repository {repo_id!r}; pass a preset, a local folder or a valid id") from err
    _SNAPSHOTS[repo_id] = snap
    return snap


def resolve_model(reference: str | os.PathLike) -> ModelRef:
    """Resolve a model reference: a preset name, a task alias, an existing folder or a Hub id, tried in that order.

    A Hub id (or the Hub id of an alias) is fetched here, once per process, or found in the Hugging Face cache.

    Raises:
        ModelNotFoundError: The text is none of these, or a Hub id that is neither cached nor reachable.
    """
    text = str(reference)
    presets = _presets()
    if text in presets:
        return ModelRef(text, "preset", config_dir() / "models" / f"{text}.yaml")
    alias = task_aliases().get(text)
    if alias is not None and not Path(text).exists():
        logger.info("task alias %r -> %s", text, alias.hub_id)
        return ModelRef(text, "alias", download(alias.hub_id), alias.hub_id)
    folder = Path(text).expanduser()
    if folder.exists():
        return ModelRef(text, "folder", folder)
    if is_hub_id(text):
        return ModelRef(text, "hub", download(text), text)
    raise ModelNotFoundError(
        f"model {text!r} is neither a preset ({', '.join(list_models())}), a task alias "
        f"({', '.join(task_aliases())}), an existing folder, nor a Hub id (owner/name)"
    )
