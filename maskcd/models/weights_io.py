"""Safe reading of checkpoint files, with one-line errors for bad ones.

Every loader reads through this module: :func:`read_config` for ``config.json``, :func:`read_state_dict` for a
weights file (safetensors, or a pickle with ``torch.load(weights_only=True)``: never a pickle that runs code) and
:func:`checkpoint_errors` around ``from_pretrained`` (which reads the same files itself). A bad file becomes a
:class:`~maskcd.errors.CheckpointError` naming the file, what is wrong with it and the fix:

* a pickle carrying code, refused by ``weights_only`` → "not a plain tensor checkpoint ...: convert it to safetensors";
* a truncated or corrupt ``model.safetensors`` / ``pytorch_model.bin`` → "... is truncated or corrupt: download it
  again";
* an invalid ``config.json`` → "... is not valid JSON (...): fix it or download the checkpoint again".
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
from pathlib import Path

from maskcd.errors import CheckpointError, ConfigError

WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
"""Single-file weight names looked for in a checkpoint folder, in order of preference."""

_CORRUPT_PICKLE_MARKERS = (
    "PytorchStreamReader",  # zip container cut short or damaged
    "unexpected EOF",  # legacy pickle cut short
    "file might be corrupted",
    "Ran out of input",
    "invalid load key",
    "Unsupported operand",  # bytes that are not a pickle at all
)


def weight_file(folder: str | os.PathLike) -> Path:
    """The weights file of a checkpoint folder (``model.safetensors`` preferred over ``pytorch_model.bin``).

    Raises:
        CheckpointError: when the folder has neither.
    """
    folder = Path(folder)
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(
        f"{folder} has a config.json but no {' or '.join(WEIGHT_NAMES)}: copy the weights file next to it"
    )


def require_weights(folder: str | os.PathLike) -> None:
    """Raise a one-line :class:`CheckpointError` when ``folder`` holds no weights file (single or sharded)."""
    folder = Path(folder)
    if any((folder / n).is_file() for n in WEIGHT_NAMES) or any(folder.glob("*.index.json")):
        return
    weight_file(folder)


def _pickle_parses(path: Path) -> bool:
    """Whether ``path`` holds a complete pickle (read opcode by opcode with :mod:`pickletools`, nothing executed).

    A complete pickle that ``weights_only`` refuses carries objects other than tensors (code); an incomplete one is
    truncated or corrupt.
    """
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next(n for n in z.namelist() if n.endswith("data.pkl"))
                with z.open(name) as f:
                    for _ in pickletools.genops(f):
                        pass
        else:
            with open(path, "rb") as f:
                for _ in pickletools.genops(f):
                    pass
        return True
    except Exception:
        return False


def _describe(err: BaseException, path: Path) -> str | None:
    """The one-line message for a failed read of ``path``, or ``None`` when ``err`` is not about a bad file."""
    text = str(err)
    if _is_safetensors_error(err):
        return f"{path} is truncated or corrupt ({text.splitlines()[0] if text else type(err).__name__}): download it again"
    if isinstance(err, pickle.UnpicklingError):
        if "GLOBAL" in text or "global" in text or _pickle_parses(path):
            return (
                f"{path} is not a plain tensor checkpoint (it contains code that a safe load refuses): "
                f"convert it to safetensors"
            )
        return f"{path} is truncated or corrupt (not a readable tensor pickle): download it again"
    if isinstance(err, (RuntimeError, EOFError)) and (
        isinstance(err, EOFError) or any(m in text for m in _CORRUPT_PICKLE_MARKERS)
    ):
        return f"{path} is truncated or corrupt ({text.splitlines()[0][:120] if text else 'EOF'}): download it again"
    return None


def _is_safetensors_error(err: BaseException) -> bool:
    return type(err).__name__ == "SafetensorError"


def _load_file(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap can only be used" not in str(err):
            raise
    return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) pickles cannot be mapped


def read_state_dict(path: str | os.PathLike) -> dict:
    """Tensors of a weights file, or of the weights file in a checkpoint folder (see :func:`weight_file`).

    Safetensors are read with :func:`safetensors.torch.load_file`; pickles only with ``torch.load(weights_only=True)``
    (memory-mapped when the file is a zip container).

    Raises:
        CheckpointError: missing, truncated or corrupt file, or a pickle that carries code.
    """
    path = Path(path)
    if path.is_dir():
        path = weight_file(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: check the checkpoint folder")
    try:
        return _load_file(path)
    except Exception as err:
        msg = _describe(err, path)
        if msg is None:
            raise
        raise CheckpointError(msg) from err


def read_config(folder: str | os.PathLike) -> dict:
    """``folder/config.json`` as a dict.

    Raises:
        CheckpointError: the file is not valid JSON or not a JSON object.
    """
    path = Path(folder) / "config.json"
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"{path} is not valid JSON ({str(err).splitlines()[0]}): fix it or download the checkpoint again"
        ) from err
    if not isinstance(data, dict):
        raise CheckpointError(
            f"{path} is not a JSON object of config keys (found {type(data).__name__}): fix it or download the "
            f"checkpoint again"
        )
    return data


@contextlib.contextmanager
def checkpoint_errors(folder: str | os.PathLike):
    """Turn errors from reading ``folder``'s files (e.g. inside ``from_pretrained``) into a :class:`CheckpointError`.

    Errors that are not about a bad file propagate unchanged.
    """
    folder = Path(folder)
    try:
        yield
    except CheckpointError:
        raise
    except ConfigError as err:  # a bad value in config.json: name the file
        raise ConfigError(f"{folder / 'config.json'}: {err}; fix the value or download the checkpoint again") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        read_config(folder)  # raises the one-line error when config.json is the bad file
        raise err
    except Exception as err:
        name = "model.safetensors" if _is_safetensors_error(err) else "pytorch_model.bin"
        msg = _describe(err, folder / name) if (folder / name).is_file() else None
        if msg is None:
            raise
        raise CheckpointError(msg) from err
