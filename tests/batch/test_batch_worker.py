"""Worker-side pieces that do not need a mapped scene: quicklook, failure isolation, stale state, the model cache."""

from __future__ import annotations

import numpy as np
from PIL import Image

from maskcd.batch.catalog import read_catalog
from maskcd.batch.manifest import model_fingerprint, site_key
from maskcd.batch.quicklook import write_quicklook
from maskcd.batch.worker import LOAD_COUNTS, process_site, worker_model
from maskcd.inference.options import MapOptions

ORIGIN = (512000.0, 5_112_000.0)


def test_quicklook_panels_and_overlay(tmp_path, make_scene, image_writer):
    before, after = make_scene(tmp_path, seed=3, size=96)
    # a "mask COG" on a sub-grid of the images: 48x48 px at 2 m, change in the top-left quarter, nodata in a column
    mask = np.zeros((48, 48), np.uint8)
    mask[:24, :24] = 1
    mask[:, -4:] = 255
    image_writer(tmp_path / "mask.tif", mask, origin=ORIGIN, res=2.0)
    out = write_quicklook([{"before": str(before), "after": str(after), "mask": str(tmp_path / "mask.tif"),
                            "title": "a 2021 -> 2023"}], tmp_path / "q.png", max_size=32)
    img = np.asarray(Image.open(out).convert("RGB"))
    title_h, gap = 14, 4
    assert img.shape == (32 + title_h + gap, 3 * 32 + 2 * gap, 3)
    overlay = img[title_h:title_h + 32, 2 * (32 + gap):].astype(int)
    red = overlay[:16, :16]  # changed quarter, reduced by 48 -> 32 px
    rest = overlay[20:, :20]
    assert (red[..., 0] - red[..., 1]).mean() > 80 and (rest[..., 0] - rest[..., 1]).mean() < 40
    assert overlay[:, -2:].max() == 0  # nodata column painted black
    # the before panel is the image itself, stretched: not blank and not the after panel
    b_panel, a_panel = img[title_h:title_h + 32, :32], img[title_h:title_h + 32, 36:68]
    assert b_panel.std() > 10 and np.abs(b_panel.astype(int) - a_panel).mean() > 1


def _job(tmp_path, before, after):
    (tmp_path / "cat.csv").write_text(f"site_id,before,after\nsite1,{before},{after}\n")
    return read_catalog(tmp_path / "cat.csv")[0]


def _raising_mapper(*args, **kwargs):
    raise RuntimeError("GPU fell off the bus")


def test_failed_site_is_reported_and_leaves_no_manifest_or_temporaries(tmp_path, make_scene):
    before, after = make_scene(tmp_path / "img", seed=4, size=64)
    job = _job(tmp_path, before, after)
    opts = MapOptions(model="maskcd-tiny", device="cpu", workers=0).to_dict()
    key = site_key(job, opts, model_fingerprint("maskcd-tiny"))
    site_dir = tmp_path / "out" / "site1"
    site_dir.mkdir(parents=True)
    (site_dir / "manifest.json").write_text("{}")  # a finished earlier run ...
    (site_dir / ".tmp-deadbeef").mkdir()  # ... and the leftovers of a killed one
    report = process_site(job, str(tmp_path / "out"), opts, key, _raising_mapper)
    assert report.status == "failed" and report.error == "RuntimeError: GPU fell off the bus"
    assert "Traceback" in report.traceback
    assert sorted(p.name for p in site_dir.iterdir()) == []  # no manifest: a rerun redoes the site


def test_missing_input_fails_before_loading_the_model(tmp_path):
    job = _job(tmp_path, tmp_path / "gone_before.tif", tmp_path / "gone_after.tif")
    opts = MapOptions(model="maskcd-tiny", device="cpu").to_dict()
    n_loads = sum(LOAD_COUNTS.values())
    report = process_site(job, str(tmp_path / "out"), opts, site_key(job, opts, model_fingerprint("maskcd-tiny")))
    assert report.status == "failed"
    assert report.error.startswith("FileNotFoundError") and "gone_before.tif" in report.error
    assert sum(LOAD_COUNTS.values()) == n_loads


def test_worker_model_cache_loads_once(tiny_model_dir):
    m1, t1, cached1 = worker_model(tiny_model_dir, "cpu")
    m2, t2, cached2 = worker_model(tiny_model_dir, "cpu")
    assert m1 is m2 and cached2 and t2 == 0.0
    assert LOAD_COUNTS[(tiny_model_dir, "cpu")] == 1
    assert not m1.training


def test_preset_weights_are_seeded_identically(tmp_path):
    import torch

    from maskcd.batch import worker as w

    a, _, _ = worker_model("maskcd-tiny", "cpu")
    w._MODELS.clear()  # as a second worker process would: a fresh cache
    b, _, _ = worker_model("maskcd-tiny", "cpu")
    assert a is not b
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
