"""Seeded synthetic bitemporal mining-site scenes (demo data, tests, the demo checkpoint).

A scene is rendered from two *land-cover maps* (before, after) over the same terrain:

* background: vegetation and bare soil mixed by a smooth random field;
* open pits: terraced concentric benches (alternating bench/face brightness, darker towards the floor), elliptical with
  an irregular rim;
* waste dumps: light grey-brown mounds with sun-side shading and rubble texture;
* tailings ponds: flat turquoise water with a pale beach rim (they appear, never grow);
* haul roads: pale gravel polylines 5-9 m wide joining the features; they appear or grow (extended by new
  segments).

Between the dates, features *appear* or *grow* (a pit or dump widened keeps its inner terraces identical, because the
rendering is a function of absolute position). The truth mask is exactly the set of pixels whose land-cover class
differs between the dates. The *after* image also gets nuisance changes that are **not** labelled: a per-band
illumination gain/offset, a seasonal colour shift of the vegetation, sensor noise and a misregistration of up to
``max_shift_px`` pixels (sub-pixel or one whole pixel).

:func:`make_scene_pair` writes UTM GeoTIFFs (3-band uint8 RGB, 1 m GSD, dates in ``TIFFTAG_DATETIME`` and
``ACQUISITION_DATE``) plus the truth mask; :func:`render_pair` / :class:`SyntheticPatchDataset` give in-memory pairs for
training. Every random choice comes from one ``numpy.random.Generator`` seeded by the caller.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

# land-cover classes of the rendering maps
BACKGROUND, PIT, DUMP, POND, ROAD = 0, 1, 2, 3, 4

DEFAULT_CRS = "EPSG:32633"
DEFAULT_ORIGIN = (512000.0, 5_112_000.0)  # UTM 33N, upper-left corner
BEFORE_DATE = "2021:06:15 10:30:00"
AFTER_DATE = "2023:07:02 10:30:00"


@dataclass(frozen=True)
class SyntheticConfig:
    """Rendering parameters.

    Args:
        gsd: Ground sample distance in metres (only used for object sizes and the GeoTIFF transform).
        features_per_km2: Mean number of mining features per km² (pits, dumps, ponds together).
        change_fraction: Probability that a feature changes (appears or grows) between the dates.
        max_shift_px: Largest misregistration of the after image in pixels.
        illumination: Largest relative per-band gain change of the after image.
        seasonal: Largest strength of the vegetation colour shift (0 = none, 1 = green to straw).
        noise: Standard deviation of the sensor noise in digital numbers.
    """

    gsd: float = 1.0
    features_per_km2: float = 30.0
    change_fraction: float = 0.6
    max_shift_px: float = 1.0
    illumination: float = 0.25
    seasonal: float = 0.8
    noise: float = 3.0


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    field -= field.mean()
    std = field.std()
    return field / std if std > 0 else field


@dataclass
class _Blob:
    kind: int
    cy: float
    cx: float
    a: float  # semi-axis (pixels) along the rotated x axis
    b: float
    theta: float
    harmonics: tuple  # (amplitude, frequency, phase) of the rim
    phase: float  # random phase used by the texture

    def distance(self, yy: np.ndarray, xx: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Normalised elliptical distance (1 = rim) at ``scale`` times the semi-axes, and the absolute radius (px)."""
        dy, dx = yy - self.cy, xx - self.cx
        c, s = math.cos(self.theta), math.sin(self.theta)
        u, v = c * dx + s * dy, -s * dx + c * dy
        ang = np.arctan2(v, u)
        rim = 1.0 + sum(amp * np.sin(freq * ang + ph) for amp, freq, ph in self.harmonics)
        r_abs = np.sqrt((u / (self.a / self.b)) ** 2 + v**2)  # radius measured in units of the b axis
        return r_abs / (self.b * scale * rim), r_abs


def _random_blob(rng: np.random.Generator, kind: int, size: int, gsd: float) -> _Blob:
    radius_m = {PIT: (45, 130), DUMP: (35, 100), POND: (30, 90)}[kind]
    b = rng.uniform(*radius_m) / gsd
    a = b * rng.uniform(0.7, 1.5)
    harmonics = tuple((rng.uniform(0.02, 0.08), int(rng.integers(2, 6)), rng.uniform(0, 2 * math.pi)) for _ in range(3))
    return _Blob(kind, rng.uniform(0, size), rng.uniform(0, size), a, b, rng.uniform(0, math.pi), harmonics,
                 rng.uniform(0, 2 * math.pi))


def _road_mask(shape: tuple[int, int], points: list[tuple[float, float]], width: float) -> np.ndarray:
    """Boolean mask of a polyline of the given width (pixels)."""
    h, w = shape
    mask = np.zeros(shape, bool)
    for (y0, x0), (y1, x1) in zip(points[:-1], points[1:]):
        length = max(math.hypot(y1 - y0, x1 - x0), 1.0)
        n = int(length) + 1
        ys, xs = np.linspace(y0, y1, n), np.linspace(x0, x1, n)
        inside = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        mask[np.round(ys[inside]).astype(int).clip(0, h - 1), np.round(xs[inside]).astype(int).clip(0, w - 1)] = True
    return ndimage.binary_dilation(mask, iterations=max(1, int(round(width / 2))))


@dataclass
class _Scene:
    """Geometry of one scene: blobs with before/after scales and roads with before/after presence."""

    blobs: list  # (blob, scale_before or 0 when absent, scale_after)
    roads: list  # (points, width, points drawn before (0 = absent), points drawn after)


def _random_scene(rng: np.random.Generator, size: int, cfg: SyntheticConfig) -> _Scene:
    area_km2 = (size * cfg.gsd / 1000.0) ** 2
    n = max(2, int(rng.poisson(cfg.features_per_km2 * area_km2)))
    kinds = rng.choice([PIT, DUMP, POND], size=n, p=[0.4, 0.35, 0.25])
    blobs = []
    for kind in kinds:
        blob = _random_blob(rng, int(kind), size, cfg.gsd)
        if rng.random() < cfg.change_fraction:
            if kind == POND or rng.random() < 0.5:  # appears (ponds only appear: a grown pond moves its beach)
                before, after = 0.0, 1.0
            else:  # grows
                before, after = rng.uniform(0.55, 0.8), 1.0
        else:  # stable
            before = after = 1.0
        blobs.append((blob, before, after))
    roads = []
    n_roads = max(1, int(rng.poisson(0.5 * n)))
    for _ in range(n_roads):
        k = int(rng.integers(2, 5))
        if blobs and rng.random() < 0.8:  # start at a feature
            blob = blobs[int(rng.integers(len(blobs)))][0]
            start = (blob.cy, blob.cx)
        else:
            start = (rng.uniform(0, size), rng.uniform(0, size))
        pts = [start]
        heading = rng.uniform(0, 2 * math.pi)
        for _ in range(k):
            heading += rng.normal(0, 0.6)
            step = rng.uniform(60, 200) / cfg.gsd
            pts.append((pts[-1][0] + step * math.sin(heading), pts[-1][1] + step * math.cos(heading)))
        width = rng.uniform(5, 9) / cfg.gsd
        changed = rng.random() < cfg.change_fraction
        if not changed:
            before = len(pts)
        elif len(pts) >= 3 and rng.random() < 0.5:  # grows: extended by its last segments
            before = len(pts) // 2 + 1
        else:  # appears
            before = 0
        roads.append((pts, width, before, len(pts)))
    return _Scene(blobs, roads)


def _landcover(scene: _Scene, shape: tuple[int, int], when: str) -> tuple[np.ndarray, dict]:
    """Class map for one date and, per blob, its normalised distance field where drawn."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    cover = np.zeros(shape, np.uint8)
    for points, width, before, after in scene.roads:
        n = before if when == "before" else after
        if n >= 2:
            cover[_road_mask(shape, points[:n], width)] = ROAD
    fields = {}
    # draw large blobs first so that smaller ones overprint them
    order = sorted(range(len(scene.blobs)), key=lambda i: -scene.blobs[i][0].a * scene.blobs[i][0].b)
    for i in order:
        blob, s_before, s_after = scene.blobs[i]
        scale = s_before if when == "before" else s_after
        if scale <= 0:
            continue
        # cheap bounding box
        r = max(blob.a, blob.b) * scale * 1.3 + 2
        y0, y1 = int(max(0, blob.cy - r)), int(min(shape[0], blob.cy + r + 1))
        x0, x1 = int(max(0, blob.cx - r)), int(min(shape[1], blob.cx + r + 1))
        if y0 >= y1 or x0 >= x1:
            continue
        d, r_abs = blob.distance(yy[y0:y1, x0:x1], xx[y0:y1, x0:x1], scale)
        inside = d <= 1.0
        cover[y0:y1, x0:x1][inside] = blob.kind
        fields[i] = (y0, y1, x0, x1, inside, r_abs, d)
    return cover, fields


def _render(scene: _Scene, cover: np.ndarray, fields: dict, terrain: dict, gsd: float) -> np.ndarray:
    """RGB float image (0-255) of a class map over the shared terrain."""
    h, w = cover.shape
    veg, soil_mix, fine = terrain["veg"], terrain["soil_mix"], terrain["fine"]
    # background: vegetation (green) and soil (tan) mixed by a smooth field
    vegetation = np.stack([70 + 15 * veg, 105 + 20 * veg, 55 + 10 * veg], -1)
    soil = np.stack([165 + 12 * veg, 140 + 10 * veg, 105 + 8 * veg], -1)
    t = (1 / (1 + np.exp(-2.5 * soil_mix)))[..., None]
    img = vegetation * (1 - t) + soil * t + 8 * fine[..., None]
    # roads: pale gravel
    road = cover == ROAD
    img[road] = np.array([190.0, 182.0, 165.0]) + 6 * fine[road][:, None]
    for i, (y0, y1, x0, x1, inside, r_abs, dist) in fields.items():
        blob = scene.blobs[i][0]
        sub = img[y0:y1, x0:x1]
        visible = inside & (cover[y0:y1, x0:x1] == blob.kind)
        f = fine[y0:y1, x0:x1][visible]
        r = r_abs[visible] * gsd
        if blob.kind == PIT:
            bench = 14.0  # metres per bench + face
            ring = np.floor(r / bench)
            frac = r / bench - ring
            face = frac > 0.65  # the steep face of each bench is in shadow
            depth = np.clip(1 - r / (blob.b * gsd * 1.6), 0, 1)  # darker towards the floor
            base = np.stack([150 - 55 * depth, 135 - 55 * depth, 120 - 50 * depth], -1)
            base[face] *= 0.62
            base += 6 * f[:, None]
            sub[visible] = base
        elif blob.kind == DUMP:
            yy, xx = np.nonzero(visible)
            gy, gx = (yy + y0 - blob.cy), (xx + x0 - blob.cx)
            shade = (gx - gy) / (np.hypot(gx, gy) + 1e-3)  # sun from the north-east
            slope = np.clip(r / (blob.b * gsd), 0, 1)
            light = 1 + 0.18 * shade * slope
            base = np.stack([185 * light, 178 * light, 168 * light], -1) + 14 * f[:, None]
            sub[visible] = base
        elif blob.kind == POND:
            # flat water with a thin beach where the normalised radius is close to the rim
            edge = dist[visible] > 0.9
            water = np.stack([np.full_like(r, 88.0), np.full_like(r, 168.0), np.full_like(r, 176.0)], -1)
            water += 1.5 * f[:, None]
            water[edge] = np.array([215.0, 210.0, 195.0])
            sub[visible] = water
    return img


def _terrain(rng: np.random.Generator, shape: tuple[int, int]) -> dict:
    return {
        "veg": _smooth_noise(rng, shape, 6.0),
        "soil_mix": _smooth_noise(rng, shape, 25.0) * 1.2 - 0.4,
        "fine": rng.standard_normal(shape).astype(np.float32),
    }


def _nuisance(rng: np.random.Generator, img: np.ndarray, cover: np.ndarray, veg_weight: np.ndarray,
              cfg: SyntheticConfig) -> np.ndarray:
    """Unlabelled changes of the after image: seasonal vegetation shift, illumination, misregistration."""
    out = img.copy()
    # seasonal: vegetation towards straw/yellow, proportional to the vegetation weight of each pixel
    s = rng.uniform(0.2, 1.0) * cfg.seasonal
    straw = np.array([150.0, 140.0, 80.0])
    wv = (veg_weight * (cover == BACKGROUND))[..., None] * s
    out = out + 0.7 * wv * (straw - out)
    # illumination: per-band gain and offset
    gain = 1 + rng.uniform(-cfg.illumination, cfg.illumination) + rng.uniform(-0.05, 0.05, 3)
    offset = rng.uniform(-12, 12, 3)
    out = out * gain + offset
    # misregistration: sub-pixel or one-pixel shift
    if cfg.max_shift_px > 0:
        shift = rng.uniform(-cfg.max_shift_px, cfg.max_shift_px, 2)
        if rng.random() < 0.3:
            shift = np.round(shift)
        out = np.stack([ndimage.shift(out[..., c], shift, order=1, mode="nearest") for c in range(3)], -1)
    return out


def render_pair(rng: np.random.Generator, size: int, cfg: SyntheticConfig | None = None):
    """Render one bitemporal pair.

    Args:
        rng: The generator driving every random choice.
        size: Height and width in pixels.
        cfg: Rendering parameters.

    Returns:
        ``(before, after, truth)``: ``(size, size, 3)`` uint8 RGB images and a ``(size, size)`` uint8 mask with 1 where
        the land cover changed (mining features appeared or grew) and 0 elsewhere.
    """
    cfg = cfg or SyntheticConfig()
    shape = (size, size)
    scene = _random_scene(rng, size, cfg)
    terrain = _terrain(rng, shape)
    cover_a, fields_a = _landcover(scene, shape, "before")
    cover_b, fields_b = _landcover(scene, shape, "after")
    before = _render(scene, cover_a, fields_a, terrain, cfg.gsd)
    after = _render(scene, cover_b, fields_b, terrain, cfg.gsd)
    veg_weight = 1 - 1 / (1 + np.exp(-2.5 * terrain["soil_mix"]))
    after = _nuisance(rng, after, cover_b, veg_weight, cfg)
    before = before + rng.normal(0, cfg.noise, before.shape)
    after = after + rng.normal(0, cfg.noise, after.shape)
    truth = (cover_a != cover_b).astype(np.uint8)
    to8 = lambda x: np.clip(np.round(x), 0, 255).astype(np.uint8)  # noqa: E731
    return to8(before), to8(after), truth


def _write(path: Path, array: np.ndarray, transform, crs: str, tags: dict, nodata=None) -> None:
    import rasterio

    from maskcd.io.atomic import atomic_write

    array = array if array.ndim == 3 else array[None]
    profile = dict(driver="GTiff", width=array.shape[2], height=array.shape[1], count=array.shape[0],
                   dtype=array.dtype, crs=crs, transform=transform, tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate")
    if array.shape[0] == 3:
        profile["photometric"] = "RGB"
    if nodata is not None:
        profile["nodata"] = nodata
    with atomic_write(path, overwrite=True) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(array)
        dst.update_tags(**tags)
        if array.shape[0] == 3:
            dst.descriptions = ("red", "green", "blue")


def make_scene_pair(
    out_dir: str | os.PathLike,
    seed: int,
    size: int = 1024,
    *,
    crs: str = DEFAULT_CRS,
    origin: tuple[float, float] = DEFAULT_ORIGIN,
    cfg: SyntheticConfig | None = None,
    prefix: str | None = None,
) -> dict:
    """Write a synthetic before/after GeoTIFF pair and its truth mask.

    Args:
        out_dir: Folder to write into (created if missing).
        seed: Seed of the generator; the same seed gives identical files.
        size: Width and height in pixels.
        crs: A projected CRS (default UTM 33N).
        origin: Upper-left corner in CRS units.
        cfg: Rendering parameters (``gsd`` sets the pixel size).
        prefix: File name prefix (default ``synthetic_<seed>``).

    Returns:
        ``{"before": Path, "after": Path, "truth": Path, "seed": int, "changed_fraction": float}``.
    """
    from rasterio.transform import from_origin

    cfg = cfg or SyntheticConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    before, after, truth = render_pair(rng, size, cfg)
    transform = from_origin(origin[0], origin[1], cfg.gsd, cfg.gsd)
    prefix = prefix or f"synthetic_{seed}"
    paths = {
        "before": out / f"{prefix}_before.tif",
        "after": out / f"{prefix}_after.tif",
        "truth": out / f"{prefix}_truth.tif",
    }
    common = {"MASKCD_SYNTHETIC_SEED": str(seed)}
    _write(paths["before"], before.transpose(2, 0, 1), transform, crs,
           {**common, "TIFFTAG_DATETIME": BEFORE_DATE, "ACQUISITION_DATE": "2021-06-15"})
    _write(paths["after"], after.transpose(2, 0, 1), transform, crs,
           {**common, "TIFFTAG_DATETIME": AFTER_DATE, "ACQUISITION_DATE": "2023-07-02"})
    _write(paths["truth"], truth, transform, crs, {**common, "MASKCD_TRUTH": "1 = changed, 0 = unchanged"})
    return {**paths, "seed": seed, "changed_fraction": float(truth.mean())}


class SyntheticPatchDataset:
    """An endless-looking map-style dataset of rendered patches for training.

    Item ``i`` is rendered from ``default_rng([seed, i])``, so items are reproducible and independent of the order
    (and of the number of data-loader workers). Each item renders a scene of ``scene_size`` pixels and crops a
    ``patch_size`` window, so features keep their real size and are cut by patch edges as in tiled inference.

    Args:
        length: Number of items.
        seed: Base seed.
        patch_size: Output size in pixels.
        scene_size: Rendered scene size (≥ ``patch_size``).
        cfg: Rendering parameters.

    Items are dicts with ``imageA``, ``imageB`` (``(3, H, W)`` uint8 tensors) and ``label`` (``(H, W)`` int64 in {0, 1}).
    """

    def __init__(self, length: int, seed: int = 0, patch_size: int = 128, scene_size: int = 256,
                 cfg: SyntheticConfig | None = None):
        if scene_size < patch_size:
            raise ValueError(f"scene_size {scene_size} must be at least patch_size {patch_size}")
        self.length, self.seed, self.patch_size, self.scene_size = length, seed, patch_size, scene_size
        self.cfg = cfg or SyntheticConfig()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        import torch

        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        a, b, t = render_pair(rng, self.scene_size, self.cfg)
        y, x = (rng.integers(0, self.scene_size - self.patch_size + 1, 2))
        sl = (slice(y, y + self.patch_size), slice(x, x + self.patch_size))
        return {
            "imageA": torch.from_numpy(np.ascontiguousarray(a[sl].transpose(2, 0, 1))),
            "imageB": torch.from_numpy(np.ascontiguousarray(b[sl].transpose(2, 0, 1))),
            "label": torch.from_numpy(t[sl].astype(np.int64)),
        }
