"""Per-site manifests: what a finished site was made from, so a rerun can skip it (``--resume``).

``OUTDIR/<site_id>/manifest.json`` is written last, after every output of the site has been renamed into place, so
its presence means the site finished. It records:

* ``key`` — what determines the outputs: the pairs (paths, dates, layer names), the AOI, the model id and hash and
  the mapping configuration (:func:`config_fingerprint`);
* ``inputs`` — per input image its size, modification time (ns) and SHA-256;
* ``outputs`` — the file names written in the site folder.

A site is up to date (:func:`is_up_to_date`) when the key is equal, every output exists and every input has the
recorded size and either the recorded mtime or, when only the mtime moved (a copy, a ``touch``), the recorded hash.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from maskcd.errors import InputError
from maskcd.io.atomic import write_text_atomic
from maskcd.models.reference import sha256_file  # noqa: F401  (part of this module's interface)

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1

#: MapOptions keys that do not change the mapped result, left out of the manifest key: where and how fast it runs,
#: and per-run output placement (the batch runner decides output names itself).
NON_RESULT_KEYS = frozenset({"device", "batch_size", "workers", "overwrite", "prob_out", "mask_out", "aoi"})


def file_fingerprint(path: str | Path, *, with_hash: bool = True) -> dict:
    """``{path, size, mtime_ns[, sha256]}`` of one input file; ``{path, remote: True}`` for a ``/vsi...`` URL.

    Raises:
        FileNotFoundError: The file does not exist.
    """
    if str(path).startswith("/vsi"):  # a URL GDAL reads (/vsicurl/, /vsis3/ ...): known by its address only
        return {"path": str(path), "remote": True}
    st = os.stat(path)
    info = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if with_hash:
        info["sha256"] = sha256_file(path)
    return info


def model_fingerprint(model: str) -> dict:
    """Identify the weights a model reference resolves to (:func:`maskcd.models.reference.resolve_model`).

    Args:
        model: Preset name, task alias, model folder or Hub id (as given to ``--model``).

    Returns:
        ``{"id": model, "kind": ..., "sha256": ...}``. For a folder the hash covers ``config.json`` and every weight
        file; for a preset it covers the preset YAML (presets are random weights, which the batch runner seeds
        identically on every worker); for a Hub id or an alias it covers the snapshot, fetched here once (or found in
        the cache), so that the workers find it in the cache instead of each downloading it.

    Raises:
        InputError: The reference is none of these, or a Hub id that can be neither found in the cache nor fetched.
    """
    from maskcd.models.reference import is_hub_id, resolve_model
    from maskcd.models.registry import ModelNotFoundError, list_models, task_aliases

    try:
        ref = resolve_model(model)
    except ModelNotFoundError as err:
        hub_id = task_aliases()[model].hub_id if model in task_aliases() else model
        if is_hub_id(hub_id) and err.__cause__ is not None:  # offline and not cached, no such repository, ...
            raise InputError(
                f"model {model!r} cannot be fetched from the Hugging Face cache or Hub "
                f"({type(err.__cause__).__name__}); pass a local model folder, or download it once with "
                f"`hf download {hub_id} --local-dir DIR`"
            ) from err
        raise InputError(
            f"model {model!r} is neither a preset ({', '.join(list_models())}), a task alias, an existing folder, "
            f"nor a Hub id (owner/name); pass one of those to --model"
        ) from err
    return {"id": model, "kind": ref.kind, "sha256": ref.sha256}


def _canonical(value):
    # 32 and 32.0 (a flag vs a YAML value) mean the same overlap, tile or area
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def config_fingerprint(options: dict) -> dict:
    """The mapping settings that change results (``MapOptions`` as a dict minus :data:`NON_RESULT_KEYS`)."""
    return {k: _canonical(options[k]) for k in sorted(options) if k not in NON_RESULT_KEYS and k != "model"}


def site_key(job, options: dict, model_fp: dict) -> dict:
    """The manifest key of a :class:`~maskcd.batch.catalog.SiteJob` under given options and model."""
    return {
        "version": MANIFEST_VERSION,
        "site_id": job.site_id,
        "pairs": [
            {"before": p.before, "after": p.after, "before_date": p.before_date, "after_date": p.after_date,
             "layer": p.layer}
            for p in job.pairs
        ],
        "aoi": {"wkt": job.aoi_wkt, "crs": job.aoi_crs} if job.aoi_wkt else None,
        "model": {"id": model_fp["id"], "sha256": model_fp["sha256"]},
        "config": config_fingerprint(options),
    }


def _normalise(obj):
    """JSON round trip, so tuples and lists compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True))


def read_manifest(site_dir: str | Path) -> dict | None:
    """The site's manifest, or ``None`` when it is absent or unreadable (a rerun then redoes the site)."""
    path = Path(site_dir) / MANIFEST_NAME
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_manifest(site_dir: str | Path, key: dict, inputs: list[dict], outputs: list[str]) -> Path:
    """Write ``manifest.json`` atomically (temporary name, then rename)."""
    site_dir = Path(site_dir)
    data = {**_normalise(key), "inputs": inputs, "outputs": sorted(outputs),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return write_text_atomic(site_dir / MANIFEST_NAME, json.dumps(data, indent=2, sort_keys=True), fsync=True)


def is_up_to_date(site_dir: str | Path, key: dict) -> tuple[bool, str]:
    """Whether a site folder holds finished outputs for ``key``.

    Returns:
        ``(True, "")`` or ``(False, reason)``, the reason being logged on a redo.
    """
    site_dir = Path(site_dir)
    manifest = read_manifest(site_dir)
    if manifest is None:
        return False, "no manifest"
    recorded = {k: manifest.get(k) for k in key}
    if recorded != _normalise(key):
        changed = sorted(k for k in key if recorded.get(k) != _normalise(key)[k])
        return False, f"changed: {', '.join(changed)}"
    for name in manifest.get("outputs", []):
        if not (site_dir / name).is_file():
            return False, f"output {name} is missing"
    for info in manifest.get("inputs", []):
        if info.get("remote"):
            continue
        try:
            st = os.stat(info["path"])
        except OSError:
            return False, f"input {info['path']} is missing"
        if st.st_size != info["size"]:
            return False, f"input {info['path']} changed size"
        if st.st_mtime_ns != info["mtime_ns"] and sha256_file(info["path"]) != info.get("sha256"):
            return False, f"input {info['path']} changed content"
    return True, ""
