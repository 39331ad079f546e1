"""The QGIS plugin object: registers the maskcd Processing provider."""

from __future__ import annotations

from qgis.core import QgsApplication

from .provider import MaskcdProvider


class MaskcdPlugin:
    """Registers :class:`MaskcdProvider` when QGIS starts the plugin and removes it when unloaded."""

    def __init__(self, iface=None):
        self.iface = iface
        self.provider = None

    def initProcessing(self):  # noqa: N802 - QGIS API
        self.provider = MaskcdProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802 - QGIS API
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
