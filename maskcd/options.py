"""One option loader for the command-line tools (``maskcd-map``, ``maskcd-batch``, ``maskcd-train``).

Every tool keeps its settings in one dataclass (:class:`~maskcd.inference.options.MapOptions`,
:class:`~maskcd.training.trainer.TrainConfig`) and builds it the same way, later sources winning:

1. the dataclass defaults,
2. a packaged defaults file (``maskcd/configs/map.yaml`` for the mapping tools),
3. the ``--config FILE.yaml`` the user passes (same keys as the dataclass fields, ``-`` and ``_`` alike),
4. the command-line flags the user actually gave (flags default to ``None``, so an absent flag overrides nothing).

Bad input raises :class:`~maskcd.errors.ConfigError` with one line naming the file (or flag), the key and the fix:
an unreadable or invalid YAML file, a file that is not a mapping, or an unknown key (with the nearest valid key).
Value checks belong to the dataclass itself (``__post_init__``), so the library API and the tools share them.

A dataclass field whose default is itself a dataclass (``TrainConfig.data``) is flattened: its fields are options of
the same level, and a nested field named like an outer one (``seed``) takes the same value.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from maskcd.errors import ConfigError

T = TypeVar("T")


def read_yaml(path: str | Path, *, what: str = "config file") -> dict:
    """Read a YAML mapping (the one YAML reader of option files, presets and aliases).

    Args:
        path: The file.
        what: How the message names the file (``config file``, ``preset file``...).

    Raises:
        ConfigError: The file is missing or unreadable, is not valid YAML, or is not a mapping (one line naming it).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist: check the path")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or type(err).__name__
        raise ConfigError(f"{what} {path} cannot be read ({reason}): check the file and its permissions") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{what} {path} is not valid YAML ({where}{problem}): fix its syntax") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping of 'key: value' lines, not a {type(data).__name__}")
    return data


def _option_file(path: str | Path, what: str) -> dict:
    """An option file's mapping with keys as option names (``min-area`` and ``min_area`` alike)."""
    return {str(k).replace("-", "_"): v for k, v in read_yaml(path, what=what).items()}


def check_keys(data: Mapping[str, Any], valid: Iterable[str], *, source: str) -> None:
    """Raise :class:`ConfigError` for keys of ``data`` not in ``valid``, naming ``source``, each key and its nearest
    valid key."""
    valid = list(valid)
    unknown = [k for k in data if k not in valid]
    if not unknown:
        return
    parts = []
    for key in unknown:
        near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        parts.append(f"{key!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
    raise ConfigError(f"{source}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(parts)}; "
                      f"valid keys: {', '.join(valid)}")


def parse_bands(value: Any, *, name: str = "bands") -> list[int] | None:
    """1-based band indices from ``None``, an int, a list, or text like ``"3,2,1"`` / ``"3 2 1"``.

    Raises:
        ConfigError: Anything else, or an index below 1.
    """
    if value is None:
        return None
    error = ConfigError(f"invalid {name} {value!r}: use 1-based band indices like 1,2,3")
    if isinstance(value, bool):
        raise error
    if isinstance(value, int):
        items: list = [value]
    elif isinstance(value, str):
        items = value.replace(",", " ").split()
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise error
    try:
        bands = [_strict_int(v) for v in items]
    except (TypeError, ValueError):
        raise error from None
    if not bands or min(bands) < 1:
        raise error
    return bands


def check_value(ok: bool, name: str, value: Any, allowed: str) -> None:
    """Raise ``ConfigError("invalid NAME VALUE: use ALLOWED")`` unless ``ok`` (for the dataclasses' checks)."""
    if not ok:
        raise ConfigError(f"invalid {name} {value!r}: use {allowed}")


def as_number(value: Any, name: str, allowed: str) -> int | float:
    """``value`` as an int or float (not a bool, not NaN); numeric text such as ``"0.5"`` is read as a float."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    check_value(isinstance(value, (int, float)) and not isinstance(value, bool) and value == value, name, value,
                allowed)
    return value


def as_int(value: Any, name: str, allowed: str) -> int:
    """``value`` as an int (a whole float or numeric text is accepted)."""
    value = as_number(value, name, allowed)
    check_value(float(value).is_integer(), name, value, allowed)
    return int(value)


def _strict_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(value)
        return int(value)
    return int(value)


def option_keys(cls: type) -> list[str]:
    """The option names of a dataclass: its fields, with dataclass-valued fields flattened (see module docstring)."""
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        nested = _nested_type(f)
        if nested is None:
            keys.append(f.name)
        else:
            keys += [k for k in option_keys(nested) if k not in keys]
    return keys


def _nested_type(f: dataclasses.Field) -> type | None:
    """The dataclass type of a field whose default factory builds a dataclass, else ``None``."""
    factory = f.default_factory
    if factory is not dataclasses.MISSING and isinstance(factory, type) and dataclasses.is_dataclass(factory):
        return factory
    return None


def build(cls: type[T], values: Mapping[str, Any]) -> T:
    """``cls(**values)`` with flattened nested dataclass options put back into their dataclass."""
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        nested = _nested_type(f)
        if nested is None:
            if f.name in values:
                kwargs[f.name] = values[f.name]
        else:
            kwargs[f.name] = build(nested, {k: v for k, v in values.items() if k in option_keys(nested)})
    return cls(**kwargs)


def given_flags(args: argparse.Namespace, keys: Iterable[str], rename: Mapping[str, str] | None = None) -> dict:
    """The options among ``keys`` that the command line set (not ``None``); ``rename`` maps option name to the
    argparse ``dest`` where they differ (``workers`` → ``loader_workers``)."""
    rename = rename or {}
    out = {}
    for key in keys:
        value = getattr(args, rename.get(key, key), None)
        if value is not None:
            out[key] = value
    return out


def load_options(
    cls: type[T],
    flags: Mapping[str, Any],
    *,
    config: str | Path | None = None,
    defaults: str | Path | None = None,
    exclude: Iterable[str] = (),
    required: Mapping[str, str] | None = None,
) -> T:
    """Build ``cls`` from its defaults < ``defaults`` file < ``config`` file < ``flags``.

    Args:
        cls: The options dataclass; its ``__post_init__`` checks the values.
        flags: Options given on the command line (see :func:`given_flags`).
        config: The user's ``--config`` YAML (its unknown keys are errors).
        defaults: A packaged defaults YAML, skipped when absent (unknown keys are errors; excluded keys are dropped).
        exclude: Options the tool sets itself (``maskcd-batch``: per-site outputs); a config file may not set them,
            and they are dropped from ``defaults`` and ``flags``.
        required: ``{option: message}`` for options without a default; a missing one raises ``ConfigError(message)``.

    Raises:
        ConfigError: An unreadable/invalid file, an unknown key, a missing required option, or a bad value.
    """
    exclude = set(exclude)
    keys = option_keys(cls)
    valid = [k for k in keys if k not in exclude]
    values: dict[str, Any] = {}
    if defaults is not None and Path(defaults).is_file():
        data = _option_file(defaults, "defaults file")
        check_keys(data, keys, source=f"defaults file {defaults}")
        values.update({k: v for k, v in data.items() if k not in exclude})
    if config is not None:
        data = _option_file(config, "config file")
        fixed = [k for k in data if k in exclude]
        if fixed:
            raise ConfigError(f"config file {config}: {', '.join(map(repr, fixed))} cannot be set here (the tool sets "
                              f"{'them' if len(fixed) > 1 else 'it'} itself): remove {'them' if len(fixed) > 1 else 'it'}")
        check_keys(data, valid, source=f"config file {config}")
        values.update(data)
    values.update({k: v for k, v in flags.items() if k not in exclude})
    for key, message in (required or {}).items():
        if values.get(key) is None:
            raise ConfigError(message)
    return build(cls, values)
