"""Manifests: keys, up-to-date checks on input size/mtime/hash, model and configuration changes."""

from __future__ import annotations

import os

import pytest

from maskcd.batch.catalog import read_catalog
from maskcd.batch.manifest import (
    config_fingerprint,
    file_fingerprint,
    is_up_to_date,
    model_fingerprint,
    site_key,
    write_manifest,
)
from maskcd.inference.options import MapOptions


@pytest.fixture
def site(tmp_path):
    (tmp_path / "a.tif").write_bytes(b"before-bytes")
    (tmp_path / "b.tif").write_bytes(b"after-bytes!")
    (tmp_path / "cat.csv").write_text("site_id,before,after\ns1,a.tif,b.tif\n")
    job = read_catalog(tmp_path / "cat.csv")[0]
    out = tmp_path / "out" / "s1"
    out.mkdir(parents=True)
    (out / "changes.gpkg").write_bytes(b"gpkg")
    opts = MapOptions(model="maskcd-tiny", threshold=0.4).to_dict()
    key = site_key(job, opts, model_fingerprint("maskcd-tiny"))
    write_manifest(out, key, [file_fingerprint(p) for p in job.images], ["changes.gpkg"])
    return tmp_path, job, out, opts, key


def test_matching_manifest_is_up_to_date(site):
    _, _, out, _, key = site
    assert is_up_to_date(out, key) == (True, "")


def test_missing_output_or_manifest_means_redo(site):
    _, _, out, _, key = site
    (out / "changes.gpkg").unlink()
    assert is_up_to_date(out, key) == (False, "output changes.gpkg is missing")
    (out / "manifest.json").unlink()
    assert is_up_to_date(out, key) == (False, "no manifest")


def test_touched_but_identical_input_still_matches_changed_content_does_not(site):
    root, _, out, _, key = site
    st = os.stat(root / "a.tif")
    os.utime(root / "a.tif", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert is_up_to_date(out, key)[0]  # same bytes: the hash rescues the moved mtime
    (root / "a.tif").write_bytes(b"BEFORE-bytes")  # same size, new content
    ok, reason = is_up_to_date(out, key)
    assert not ok and "changed content" in reason
    (root / "a.tif").write_bytes(b"longer before bytes")
    assert "changed size" in is_up_to_date(out, key)[1]


def test_config_and_model_changes_invalidate_but_speed_settings_do_not(site, tmp_path):
    _, job, out, opts, key = site
    fp = model_fingerprint("maskcd-tiny")
    faster = {**opts, "batch_size": 64, "device": "cuda", "workers": 8}
    assert site_key(job, faster, fp) == key
    ok, reason = is_up_to_date(out, site_key(job, {**opts, "threshold": 0.6}, fp))
    assert not ok and reason == "changed: config"
    other = {**fp, "sha256": "0" * 64}
    assert is_up_to_date(out, site_key(job, opts, other)) == (False, "changed: model")
    assert "threshold" in config_fingerprint(opts) and "device" not in config_fingerprint(opts)


def test_model_fingerprint_of_a_folder_follows_the_weights(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"w1")
    first = model_fingerprint(str(folder))
    assert first["kind"] == "folder" and first == model_fingerprint(str(folder))
    (folder / "model.safetensors").write_bytes(b"w2")
    assert model_fingerprint(str(folder))["sha256"] != first["sha256"]


def test_unresolvable_model_is_an_input_error(tmp_path, monkeypatch):
    from maskcd.errors import InputError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="neither a preset"):
        model_fingerprint(str(tmp_path / "no-such-folder"))
    with pytest.raises(InputError, match="cannot be fetched"):
        model_fingerprint("nobody-has/this-model-xyz")


def test_equal_numbers_of_different_types_give_one_key(site):
    _, job, out, opts, key = site
    fp = model_fingerprint("maskcd-tiny")
    assert site_key(job, {**opts, "overlap": 32}, fp) == site_key(job, {**opts, "overlap": 32.0}, fp)
    assert site_key(job, {**opts, "overlap": 32}, fp) != site_key(job, {**opts, "overlap": 0.25}, fp)
