"""Map published (transformers 4.x) checkpoint keys onto maskcd models with transformers' own weight renaming.

Transformers 5 renames legacy keys while loading (``transformers.conversion_mapping``). :func:`legacy_key_mapping`
applies the same renamings to a list of keys without loading anything, so a checkpoint layout (e.g. the key list of a
full-size published MaskCD) can be checked against a model built on the meta device.
"""

from __future__ import annotations

from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import WeightConverter, rename_source_key


def legacy_key_mapping(model, keys) -> dict[str, str]:
    """``{checkpoint key: model state_dict key}`` after transformers' renamings for ``model``."""
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    meta = model.state_dict()
    return {
        key: rename_source_key(key, renamings, converters, model.base_model_prefix, meta)[0] for key in keys
    }
