"""``--scale``: 16-bit / float Sentinel-2 scenes reach the model inside its training value range (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch

from maskcd.errors import ConfigError, InputError
from maskcd.inference import MapOptions, map_scene
from maskcd.inference.pipeline import map_rasters
from maskcd.models.base import IMAGENET_MEAN, IMAGENET_STD, InferenceSpec
from maskcd.vectorization import read_run_metadata

S2 = ("geotiff_bitemporal", "s2_l1c_slovenia_eolearn_refscenes")
SPEC8 = InferenceSpec(input_bands=("red", "green", "blue"), value_scale=255.0, image_mean=IMAGENET_MEAN,
                      image_std=IMAGENET_STD, tile_size=64)


@pytest.fixture
def spy_model(constant_model):
    class Spy(constant_model):
        """Records the normalised windows it is fed (as the [0, 1] values they stand for)."""

        def __init__(self):
            super().__init__(0.1, SPEC8)
            self.seen: list[np.ndarray] = []

        def forward(self, image_a, image_b, labels=None):
            mean = torch.tensor(SPEC8.image_mean).view(1, -1, 1, 1)
            std = torch.tensor(SPEC8.image_std).view(1, -1, 1, 1)
            for img in (image_a, image_b):
                self.seen.append((img.float().cpu() * std + mean).numpy())
            return super().forward(image_a, image_b)

    return Spy()


def _as_uint16(src, dst):
    """The L1C product's 16-bit digital numbers (reflectance × 10000) of a converted scene."""
    with rasterio.open(src) as ds:
        data, profile = ds.read(), ds.profile
    profile.update(dtype="uint16", nodata=0, predictor=2)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(np.clip(np.round(data * 10000), 1, 65535).astype(np.uint16))
    return dst


def _opts(**kw):
    return MapOptions(model="spy", bands=[4, 3, 2], device="cpu", workers=0, batch_size=4, overwrite=True,
                      coregister="off", **kw)


@pytest.mark.parametrize("kind", ["uint16", "float32"])
def test_sentinel2_windows_fed_to_the_model_are_in_its_training_range(tmp_path, shared_data, spy_model, kind):
    folder = shared_data(*S2)
    before, after = folder / "reference_scene_2.tif", folder / "reference_scene_3.tif"
    if kind == "uint16":
        before, after = _as_uint16(before, tmp_path / "s2_b.tif"), _as_uint16(after, tmp_path / "s2_a.tif")
    res = map_scene(before, after, tmp_path / "s2.gpkg", _opts(scale="auto"), model=spy_model, progress=False)
    x = np.concatenate([w.reshape(w.shape[0], w.shape[1], -1) for w in spy_model.seen], axis=2)  # (B, C, px)
    x = np.moveaxis(x, 1, 0).reshape(3, -1)
    lo, hi = np.percentile(x, [2, 98], axis=1)
    print(f"{kind}: [0,1]-equivalent model input per band: min {x.min(1).round(3)}, 2 % {lo.round(3)}, "
          f"98 % {hi.round(3)}, max {x.max(1).round(3)}")
    assert x.min() >= -1e-4 and x.max() <= 1 + 1e-4  # inside the 8-bit training range [0, 255] / 255
    assert (lo <= 0.1).all() and (hi >= 0.85).all()  # and spread over it, not squeezed into a corner
    meta = read_run_metadata(res.gpkg, layer="changes")["radiometry"]
    assert meta["mode"] == "auto" and meta["before"]["method"] == "percentile"
    assert meta["after"]["method"] == "percentile" and len(meta["before"]["low"]) == 3
    assert all(h > low for low, h in zip(meta["after"]["low"], meta["after"]["high"], strict=True))

    if kind == "uint16":  # the old behaviour: DN / 255 lands far outside what the model saw in training
        spy_model.seen.clear()
        map_rasters(before, after, tmp_path / "n_p.tif", tmp_path / "n_m.tif", _opts(scale="none"),
                    model=spy_model, progress=False)
        raw = np.concatenate([w.ravel() for w in spy_model.seen])
        print(f"--scale none: max [0,1]-equivalent input {raw.max():.1f}")
        assert raw.max() > 3


def test_constant_band_is_a_clear_error(tmp_path, geotiff_writer, rng, spy_model):
    img = rng.integers(100, 4000, (3, 80, 80)).astype(np.uint16)
    flat = img.copy()
    flat[2] = 500
    b = geotiff_writer(tmp_path / "b.tif", img)
    a = geotiff_writer(tmp_path / "a.tif", flat)
    opts = MapOptions(model="spy", device="cpu", workers=0, overwrite=True, coregister="off", scale="percentile")
    with pytest.raises(InputError, match=r"band 3 of the after image .*a\.tif is constant"):
        map_rasters(b, a, tmp_path / "p.tif", tmp_path / "m.tif", opts, model=spy_model, progress=False)
    assert not list(tmp_path.glob("*.tmp"))


def test_histogram_matching_maps_the_after_date_onto_the_before_date(tmp_path, geotiff_writer, image_maker, rng,
                                                                     spy_model):
    img = image_maker(rng, 96, 96).astype(np.uint16) * 40 + 300  # a 16-bit scene
    other = (np.sqrt(img.astype(np.float64)) * 60 + 2000).astype(np.uint16)  # another sensor's (non-linear) response
    b = geotiff_writer(tmp_path / "b.tif", img)
    a = geotiff_writer(tmp_path / "a.tif", other)
    diffs = {}
    for match in (False, True):
        spy_model.seen.clear()
        opts = MapOptions(model="spy", device="cpu", workers=0, overwrite=True, coregister="off", scale="percentile",
                          match_histogram=match, batch_size=8)
        map_rasters(b, a, tmp_path / "p.tif", tmp_path / "m.tif", opts, model=spy_model, progress=False)
        diffs[match] = max(np.abs(spy_model.seen[i] - spy_model.seen[i + 1]).mean()
                           for i in range(0, len(spy_model.seen), 2))
    print(f"mean |after - before| of the scaled windows: percentiles only {diffs[False]:.4f}, "
          f"with histogram matching {diffs[True]:.4f}")
    assert diffs[True] < 0.01 and diffs[False] > 3 * diffs[True]


def test_unknown_scale_mode_is_a_config_error_before_any_read():
    """Library callers (not only ``MapOptions``) get the one-line ``ConfigError`` naming the valid modes; the mode is
    checked before the pair is touched."""
    from maskcd.io.radiometry import MODES, compute_radiometry

    with pytest.raises(ConfigError, match="--scale must be one of " + ", ".join(MODES)):
        compute_radiometry(None, "percent")
