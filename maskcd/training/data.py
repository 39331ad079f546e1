"""Datasets for training and testing: a patch DatasetDict (folder or Hub id) or a GeoTIFF scene catalog."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from maskcd.errors import InputError
from maskcd.options import as_int, as_number, check_value

CATALOG_SUFFIXES = (".yaml", ".yml", ".json")


def is_catalog(source: str) -> bool:
    path = Path(source)
    return path.suffix.lower() in CATALOG_SUFFIXES and path.is_file()


def dataset_name(source: str) -> str:
    """Short name for the default output folder ``exp/<name>/``."""
    path = Path(source)
    if path.exists():
        return path.stem if path.is_file() else path.resolve().name
    return source.replace("/", "_")


@dataclass
class DataOptions:
    """How patches/chips are made.

    Args:
        crop: Training crop size for patch datasets (``None`` = full patches); chip size for scenes.
        augment: Flips/90° rotations on the training split.
        jitter: Per-date radiometric jitter strength on the training split.
        chips_per_site: Random chips per site and epoch (scenes).
        stride: Grid stride for validation/test chips (scenes; default: the chip size).
        batch_sampler: Use ``RandomBatchGeoSampler`` instead of ``RandomGeoSampler`` (scenes).
        seed: Seed of every random choice.
    """

    crop: int | None = None
    augment: bool = True
    jitter: float = 0.0
    chips_per_site: int = 16
    stride: int | None = None
    batch_sampler: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> DataOptions:
        """Check the values (in place); raises :class:`~maskcd.errors.ConfigError` naming the option."""
        if self.crop is not None:
            self.crop = as_int(self.crop, "crop", "a chip size in pixels >= 1, or null")
            check_value(self.crop >= 1, "crop", self.crop, "a chip size in pixels >= 1, or null")
        if self.stride is not None:
            self.stride = as_int(self.stride, "stride", "a stride in pixels >= 1, or null")
            check_value(self.stride >= 1, "stride", self.stride, "a stride in pixels >= 1, or null")
        self.jitter = as_number(self.jitter, "jitter", "a strength >= 0")
        check_value(self.jitter >= 0, "jitter", self.jitter, "a strength >= 0")
        self.chips_per_site = as_int(self.chips_per_site, "chips_per_site", "an integer >= 1")
        check_value(self.chips_per_site >= 1, "chips_per_site", self.chips_per_site, "an integer >= 1")
        for name in ("augment", "batch_sampler"):
            check_value(isinstance(getattr(self, name), bool), name, getattr(self, name), "true or false")
        self.seed = as_int(self.seed, "seed", "an integer")
        return self


def make_split(source: str, split: str, spec, options: DataOptions, train: bool):
    """A torch dataset of one split whose items have ``image_a``, ``image_b``, ``label``, ``key``."""
    if is_catalog(source):
        from maskcd.data.scenes import ChipSpec, SceneChipDataset, assign_splits, open_sites, read_catalog

        sites = read_catalog(source)
        splits = assign_splits(sites, 0.2, 0.2, options.seed)
        chosen = [s for s in sites if splits[s.name] == split]
        if not chosen:
            raise InputError(f"catalog {source}: no site is in split {split!r}: set 'split: {split}' on a site")
        size = options.crop or spec.tile_size
        chips = ChipSpec(size=size, stride=options.stride, augment=options.augment and train, jitter=options.jitter,
                         chips_per_site=options.chips_per_site, batch_sampler=options.batch_sampler)
        return SceneChipDataset(open_sites(chosen), spec, chips, train=train, seed=options.seed)
    from maskcd.data.patches import PatchPairDataset, load_patch_dataset

    dsd = load_patch_dataset(source)
    if split not in dsd:
        raise InputError(f"dataset {source} has no split {split!r} (splits: {', '.join(dsd)})")
    return PatchPairDataset(dsd[split], spec, augment=options.augment and train, jitter=options.jitter if train else 0,
                            crop=options.crop if train else None, seed=options.seed)
