"""Scene datasets: a catalog of GeoTIFF sites (before, after, label raster or polygons, optional AOI) read with TorchGeo.

Catalog (YAML or JSON; relative paths are relative to the catalog file)::

    sites:
      - name: pit_north            # unique; splits are assigned per site, never per tile
        before: pit_north/2021.tif
        after: pit_north/2023.tif
        label: pit_north/truth.tif # raster: change_value (default 1) = change, ignore_value (default 255) = ignored
        # labels: pit_north/changes.gpkg   # or polygons: every geometry is change
        aoi: pit_north/aoi.gpkg    # optional polygon(s) restricting sampling
        split: train               # optional; else assigned by maskcd-dataset / the caller

Each date is its own TorchGeo ``RasterDataset`` (one dataset holding both files would mosaic them). The after date and
the label are put on the before grid by giving them the before dataset's CRS and resolution (torchgeo
0.8.1's ``IntersectionDataset`` cannot be sampled); samplers run on the before dataset with ``roi`` = the
site's valid region (intersection of the three footprints and the AOI) and every dataset is queried with the same
GeoSlice. Training draws chips with ``RandomGeoSampler`` (or ``RandomBatchGeoSampler``); validation/tiling uses
``GridGeoSampler``.

Reproducibility: a :class:`SceneChipDataset` materialises its chip list per epoch from one ``torch.Generator`` seeded with
``(seed, epoch)``; that generator drives the samplers and draws one augmentation seed per chip, so an epoch is the same
whatever the number of workers or processes, and resuming at epoch ``e`` replays exactly epoch ``e``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from maskcd.contract import IGNORE_INDEX
from maskcd.data.augment import paired_geometric, radiometric_jitter
from maskcd.errors import InputError

SPLITS = ("train", "val", "test")


@dataclass
class SceneSite:
    """One catalog entry (paths already resolved)."""

    name: str
    before: Path
    after: Path
    label: Path | None = None
    labels: Path | None = None
    aoi: Path | None = None
    split: str | None = None
    change_value: int = 1
    ignore_value: int | None = IGNORE_INDEX

    def __post_init__(self):
        if (self.label is None) == (self.labels is None):
            raise InputError(f"site {self.name!r}: give exactly one of 'label' (raster) or 'labels' (polygons)")
        for key in ("before", "after", "label", "labels", "aoi"):
            path = getattr(self, key)
            if path is not None and not Path(path).exists():
                raise InputError(f"site {self.name!r}: {key} file {path} does not exist: fix the catalog path")
        if self.split is not None and self.split not in SPLITS:
            raise InputError(f"site {self.name!r}: split must be one of {SPLITS}, got {self.split!r}")


def read_catalog(path: str | Path) -> list[SceneSite]:
    """Read a YAML/JSON scene catalog (see the module docstring)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError(f"scene catalog {path} does not exist: pass a YAML/JSON file with a 'sites' list")
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise InputError(f"scene catalog {path} is not valid YAML/JSON: {err}") from err
    entries = (data or {}).get("sites") if isinstance(data, dict) else data
    if not entries:
        raise InputError(f"scene catalog {path} has no 'sites' entries")
    sites, names = [], set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not {"before", "after"} <= set(entry):
            raise InputError(f"scene catalog {path}: site #{i} needs at least 'before' and 'after'")
        unknown = set(entry) - {"name", "before", "after", "label", "labels", "aoi", "split", "change_value",
                                "ignore_value"}
        if unknown:
            raise InputError(f"scene catalog {path}: site #{i} has unknown keys {sorted(unknown)}")
        name = str(entry.get("name", f"site{i}"))
        if name in names:
            raise InputError(f"scene catalog {path}: site name {name!r} is used twice")
        names.add(name)
        resolved = {k: (path.parent / v if v is not None and k in ("before", "after", "label", "labels", "aoi") else v)
                    for k, v in entry.items() if k != "name"}
        sites.append(SceneSite(name=name, **resolved))
    return sites


def write_catalog(path: str | Path, sites: list[dict]) -> Path:
    """Write a catalog YAML (paths stored relative to the catalog folder when possible)."""
    import yaml

    path = Path(path)
    out = []
    for site in sites:
        entry = {}
        for k, v in site.items():
            if isinstance(v, Path | str) and k in ("before", "after", "label", "labels", "aoi"):
                v = Path(v)
                try:
                    v = v.resolve().relative_to(path.parent.resolve())
                except ValueError:
                    pass
                v = str(v)
            entry[k] = v
        out.append(entry)
    path.write_text(yaml.safe_dump({"sites": out}, sort_keys=False))
    return path


def _torchgeo_classes():
    from torchgeo.datasets import RasterDataset

    class ImageRaster(RasterDataset):
        """One date of one site (any file name, all bands, read as float32, bilinear when warped)."""

        filename_regex = ".*"
        is_image = True

    class MaskRaster(RasterDataset):
        """A label raster (int64, nearest when warped)."""

        filename_regex = ".*"
        is_image = False

    return ImageRaster, MaskRaster


class SiteData:
    """The TorchGeo datasets of one site, aligned on the before grid, and its sampling region.

    Args:
        site: The catalog entry.

    Attributes:
        before, after, label: TorchGeo datasets (the label a ``RasterDataset`` or a ``VectorDataset``).
        roi: Shapely polygon in the before CRS where both dates (and a label raster) are present, inside the AOI.
    """

    def __init__(self, site: SceneSite):
        import shapely
        from torchgeo.datasets import VectorDataset

        ImageRaster, MaskRaster = _torchgeo_classes()
        self.site = site
        try:
            self.before = ImageRaster(paths=[str(site.before)])
            crs, res = self.before.crs, self.before.res
            if crs is None or not crs.is_projected:
                raise InputError(f"{site.before}: needs a projected CRS (e.g. UTM), got {crs}; reproject it first")
            self.after = ImageRaster(paths=[str(site.after)], crs=crs, res=res)
            if site.label is not None:
                self.label = MaskRaster(paths=[str(site.label)], crs=crs, res=res)
            else:
                self.label = VectorDataset(paths=[str(site.labels)], crs=crs, res=res)
        except InputError:
            raise
        except Exception as err:  # torchgeo raises DatasetNotFoundError/rasterio errors for unreadable files
            raise InputError(f"site {site.name!r}: cannot read its rasters ({type(err).__name__}: {err})") from err
        # a label raster bounds the labelled area; polygons do not (no polygon = no change)
        datasets = (self.before, self.after, self.label) if site.label is not None else (self.before, self.after)
        footprints = [shapely.union_all(ds.index.geometry.values) for ds in datasets]
        roi = shapely.intersection_all(footprints)
        if site.aoi is not None:
            import geopandas as gpd

            aoi = gpd.read_file(site.aoi).to_crs(crs)
            roi = roi.intersection(shapely.union_all(aoi.geometry.values))
        if roi.is_empty or roi.area == 0:
            raise InputError(f"site {site.name!r}: before, after, label (and AOI) do not overlap")
        self.roi = roi
        self.res = res

    @property
    def name(self) -> str:
        return self.site.name

    def chip_fits(self, size_px: int) -> bool:
        minx, miny, maxx, maxy = self.roi.bounds
        return min(maxx - minx, maxy - miny) >= size_px * max(self.res)

    def read(self, query) -> dict:
        """Both dates and the label for one GeoSlice: ``image_a``/``image_b`` raw float ``(C, H, W)``, ``label`` int64
        ``(H, W)`` with 0 = unchanged, 1 = changed, 255 = ignored."""
        a = self.before[query]["image"]
        b = self.after[query]["image"]
        try:
            raw = self.label[query]["mask"].long()
        except IndexError:
            if self.site.labels is None:
                raise
            raw = torch.zeros(a.shape[-2:], dtype=torch.long)  # no polygon near this chip: no change
        label = torch.zeros_like(raw)
        label[raw == self.site.change_value] = 1
        if self.site.ignore_value is not None and self.site.ignore_value != self.site.change_value:
            label[raw == self.site.ignore_value] = IGNORE_INDEX
        if self.site.labels is not None:  # polygons: every geometry is change
            label = (raw > 0).long()
        return {"image_a": a, "image_b": b, "label": label}

    def grid_queries(self, size_px: int, stride_px: int) -> list:
        """Chips covering the site's region with ``GridGeoSampler`` (the last chip of a row overhangs the edge)."""
        from torchgeo.samplers import GridGeoSampler

        return list(GridGeoSampler(self.before, size=size_px, stride=stride_px, roi=self.roi))

    def random_queries(self, size_px: int, length: int, generator: torch.Generator, batch_size: int | None = None):
        """``length`` random chips whose centre lies inside the region, drawn with ``RandomGeoSampler`` (or
        ``RandomBatchGeoSampler`` when ``batch_size`` is given: each batch from one index row).

        Note: torchgeo 0.8.1 picks the index row with the global RNG; one site = one row here, so ``generator`` alone
        decides the chips.
        """
        import shapely
        from torchgeo.samplers import RandomBatchGeoSampler, RandomGeoSampler

        if not self.chip_fits(size_px):
            raise InputError(f"site {self.name!r}: its region is smaller than one {size_px}-pixel chip")
        queries, tries = [], 0
        while len(queries) < length and tries < 20:
            tries += 1
            if batch_size:
                sampler = RandomBatchGeoSampler(self.before, size=size_px, batch_size=batch_size,
                                                length=length, roi=self.roi, generator=generator)
                drawn = [q for batch in sampler for q in batch]
            else:
                drawn = list(RandomGeoSampler(self.before, size=size_px, length=length, roi=self.roi,
                                              generator=generator))
            for q in drawn:
                cx, cy = (q[0].start + q[0].stop) / 2, (q[1].start + q[1].stop) / 2
                if self.roi.contains(shapely.Point(cx, cy)) and len(queries) < length:
                    queries.append(q)
        if len(queries) < length:
            raise InputError(f"site {self.name!r}: cannot place {size_px}-pixel chips inside its AOI")
        return queries


@dataclass
class ChipSpec:
    """How chips are cut and augmented."""

    size: int = 256
    stride: int | None = None
    augment: bool = False
    jitter: float = 0.0
    chips_per_site: int = 16
    batch_sampler: bool = False
    extra: dict = field(default_factory=dict)


class SceneChipDataset(Dataset):
    """Chips of one split of a catalog, for training (random, augmented) or validation (grid).

    Args:
        sites: The :class:`SiteData` of this split.
        spec: The model's :class:`~maskcd.models.base.InferenceSpec` (normalisation).
        chips: Chip size, stride, augmentation and sampler choice.
        train: Random chips (``RandomGeoSampler``) and augmentation when True; a fixed grid otherwise.
        seed: Seed of the generator driving every random choice.

    Items: ``image_a``/``image_b`` normalised float ``(C, H, W)``, ``label`` int64 ``(H, W)`` (0/1/255), ``key`` str.
    """

    def __init__(self, sites: list[SiteData], spec, chips: ChipSpec, train: bool, seed: int = 0):
        if not sites:
            raise InputError("no sites in this split: assign at least one site to it in the catalog")
        self.sites, self.spec, self.chips, self.train, self.seed = sites, spec, chips, train, seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Materialise the chip list of ``epoch`` (a no-op for the fixed grid after the first call)."""
        self.epoch = epoch
        if not self.train:
            if not hasattr(self, "items"):
                stride = self.chips.stride or self.chips.size
                self.items = [(i, q, 0) for i, s in enumerate(self.sites) for q in s.grid_queries(self.chips.size, stride)]
            return
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        items = []
        for i, site in enumerate(self.sites):
            queries = site.random_queries(self.chips.size, self.chips.chips_per_site, gen,
                                          batch_size=self.chips.chips_per_site if self.chips.batch_sampler else None)
            items.extend((i, q, 0) for q in queries)
        order = torch.randperm(len(items), generator=gen).tolist()
        seeds = torch.randint(0, 2**62, (len(items),), generator=gen).tolist()
        self.items = [(items[j][0], items[j][1], s) for j, s in zip(order, seeds)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        site_idx, query, seed = self.items[index]
        sample = self.sites[site_idx].read(query)
        a, b, label = sample["image_a"], sample["image_b"], sample["label"]
        if self.train and self.chips.augment:
            gen = torch.Generator().manual_seed(seed)
            a, b, label = paired_geometric(a, b, label, gen)
            if self.chips.jitter:
                a = radiometric_jitter(a, gen, self.chips.jitter, self.spec.value_scale)
                b = radiometric_jitter(b, gen, self.chips.jitter, self.spec.value_scale)
        x, y = query[0], query[1]
        return {
            "image_a": self.spec.normalize(a),
            "image_b": self.spec.normalize(b),
            "label": label,
            "key": f"{self.sites[site_idx].name}_{x.start:.1f}_{y.start:.1f}",
        }


def open_sites(catalog: str | Path | list[SceneSite]) -> list[SiteData]:
    sites = read_catalog(catalog) if not isinstance(catalog, list) else catalog
    return [SiteData(s) for s in sites]


def assign_splits(sites: list, val_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    """Split assignment by site: a site's catalog ``split`` wins; the others are shuffled with ``seed`` and cut by
    fraction (at least one val and one test site when there are 3 or more unassigned sites)."""
    fixed = {s.name: s.split for s in sites if s.split}
    free = [s.name for s in sites if not s.split]
    rng = np.random.default_rng(seed)
    free = [free[i] for i in rng.permutation(len(free))]
    n = len(free)
    n_val = int(round(n * val_fraction))
    n_test = int(round(n * test_fraction))
    if n >= 3:
        n_val, n_test = max(1, n_val), max(1, n_test)
    out = dict(fixed)
    for i, name in enumerate(free):
        out[name] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    return out
