"""Change-detection methods of the UCD model zoo, each re-implemented from its paper in its own module.

Importing :mod:`maskcd.models._all` registers them; every one follows the common call contract of
:mod:`maskcd.models.base` through :class:`maskcd.models.zoo._common.ZooModel`.
"""
