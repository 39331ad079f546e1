"""Change-detection methods of the UCD model zoo, each re-implemented from its paper in its own module.

Each registers itself on import (found lazily through :data:`maskcd.models.registry.ARCHITECTURE_MODULES`);
every one follows the common call contract of :mod:`maskcd.models.base` through
:class:`maskcd.models.zoo._common.ZooModel`.
"""
