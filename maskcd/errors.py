"""Errors that the command-line tools turn into one clear line and a non-zero exit code."""


class MaskCDError(Exception):
    """Base class: the message names the file or setting at fault and the fix."""


class InputError(MaskCDError):
    """Bad input: missing or unreadable file, no overlap, band mismatch, missing CRS, all-nodata, ..."""


class ModelNotFoundError(InputError):
    """``load_model``/``build_model`` cannot resolve a model reference; the message says what to pass instead."""


class ConfigError(InputError):
    """A model preset or configuration has an unknown key or an invalid value; the message lists the valid ones."""


class OutputExistsError(MaskCDError):
    """The output exists and ``--overwrite`` was not given."""


class CheckpointError(InputError):
    """A model checkpoint that cannot be loaded safely: invalid config.json, truncated or corrupt weights, or a
    pickle that carries code."""


class DiskFullError(MaskCDError):
    """Not enough free space for a run's temporary files and outputs (checked before writing, or ENOSPC while
    writing); the message names the folder and the space needed."""
