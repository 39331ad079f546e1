"""maskcd QGIS plugin: a Processing provider running the maskcd tools of a separate environment (no torch in QGIS)."""


def classFactory(iface):  # noqa: N802 - QGIS API
    from .plugin import MaskcdPlugin

    return MaskcdPlugin(iface)
