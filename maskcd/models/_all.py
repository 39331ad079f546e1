"""Importing this module registers every architecture (each model module registers itself on import)."""

from maskcd.models import maskcd  # noqa: F401
