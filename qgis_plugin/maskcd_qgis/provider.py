"""The "maskcd" Processing provider: its algorithms and the tools-folder setting."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider

from .algorithms import TOOLS_SETTING, MapCatalogAlgorithm, MapChangeAlgorithm


class MaskcdProvider(QgsProcessingProvider):
    """Adds "Map change" and "Map site catalog" to the Processing toolbox."""

    def id(self):
        return "maskcd"

    def name(self):
        return "maskcd"

    def longName(self):
        return "maskcd change mapping (runs the maskcd tools of a separate Python environment)"

    def load(self):
        try:  # the setting lives in Processing ▸ Options ▸ Providers ▸ maskcd
            from processing.core.ProcessingConfig import ProcessingConfig, Setting

            ProcessingConfig.settingIcons[self.name()] = self.icon()
            ProcessingConfig.addSetting(Setting(
                self.name(), TOOLS_SETTING,
                "maskcd tools folder (the bin folder of the environment holding maskcd-map; empty: PATH)", "",
                valuetype=Setting.FOLDER))
            ProcessingConfig.readSettings()
        except ImportError:  # no Processing plugin (a bare script): MASKCD_BIN_DIR or PATH are used
            pass
        self.refreshAlgorithms()
        return True

    def unload(self):
        try:
            from processing.core.ProcessingConfig import ProcessingConfig

            ProcessingConfig.removeSetting(TOOLS_SETTING)
        except ImportError:
            pass

    def loadAlgorithms(self):
        self.addAlgorithm(MapChangeAlgorithm())
        self.addAlgorithm(MapCatalogAlgorithm())
