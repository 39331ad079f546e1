"""Drive the maskcd QGIS plugin in real, headless QGIS; run by QGIS's own interpreter (``/usr/bin/python3``).

    /usr/bin/python3 tests/qgis/qgis_harness.py SPEC.json

SPEC: ``{"plugin_dir": ..., "actions": [{"name": ..., "kind": "list" | "load" | "cancel" | "fail", ...}]}``;
``load`` runs an algorithm and loads its results into the project as the Processing dialog does.
Prints one line ``RESULT <json>`` with the outcome of every action (read by ``test_qgis_plugin.py``).
"""

import json
import os
import sys
import traceback

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from qgis.core import (  # noqa: E402
    Qgis,
    QgsApplication,
    QgsLayerTreeLayer,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProject,
    QgsVectorLayer,
)

spec = json.load(open(sys.argv[1]))
sys.path.insert(0, spec["plugin_dir"])
app = QgsApplication([], False)
app.initQgis()
sys.path.append(os.path.join(QgsApplication.pkgDataPath(), "python", "plugins"))
from processing.core.Processing import Processing  # noqa: E402

Processing.initialize()
import processing  # noqa: E402
from maskcd_qgis import classFactory  # noqa: E402


class Feedback(QgsProcessingFeedback):
    """Records what the algorithm reports; cancels once progress passes ``cancel_above`` (if given)."""

    def __init__(self, cancel_above=None):
        super().__init__()
        self.messages, self.progress, self.cancel_above = [], [], cancel_above
        self.progressChanged.connect(self._on_progress)

    def _on_progress(self, value):
        self.progress.append(value)
        if self.cancel_above is not None and value > self.cancel_above and not self.isCanceled():
            self.canceled_at = value
            self.cancel()

    def pushInfo(self, info):  # noqa: N802
        self.messages.append(info)

    def pushConsoleInfo(self, info):  # noqa: N802
        self.messages.append(info)

    def reportError(self, error, fatalError=False):  # noqa: N802, N803
        self.messages.append("ERROR " + error)


def layer_tree():
    rows = []
    for node in QgsProject.instance().layerTreeRoot().children():
        if isinstance(node, QgsLayerTreeLayer):
            layer = node.layer()
            renderer = layer.renderer() if layer is not None and hasattr(layer, "renderer") else None
            rows.append({"name": node.name(), "source": layer.source(), "valid": layer.isValid(),
                         "type": "vector" if isinstance(layer, QgsVectorLayer) else "raster",
                         "renderer": renderer.type() if renderer else None,
                         "features": layer.featureCount() if hasattr(layer, "featureCount") else None})
    return rows


plugin = classFactory(None)
plugin.initProcessing()
out = {"qgis": Qgis.QGIS_VERSION}
registry = QgsApplication.processingRegistry()
for action in spec["actions"]:
    name, kind = action["name"], action["kind"]
    res = out[name] = {}
    try:
        if kind == "list":
            provider = registry.providerById("maskcd")
            res["provider"] = provider.longName() if provider else None
            res["algorithms"] = sorted((a.id(), a.displayName()) for a in provider.algorithms())
            alg = registry.algorithmById("maskcd:mapchange")
            res["parameters"] = [p.name() for p in alg.parameterDefinitions()]
        elif kind == "load":
            feedback = Feedback()
            QgsProject.instance().clear()
            results = processing.runAndLoadResults(action["alg"], action["params"], feedback=feedback)
            res.update(results=results, tree=layer_tree(), progress_max=max(feedback.progress or [0]),
                       messages=feedback.messages[-40:])
        elif kind in ("cancel", "fail"):
            feedback = Feedback(cancel_above=action.get("cancel_above"))
            try:
                processing.run(action["alg"], action["params"], feedback=feedback)
                res["error"] = None
            except QgsProcessingException as err:
                res["error"] = str(err)
            res.update(canceled_at=getattr(feedback, "canceled_at", None), messages=feedback.messages[-40:],
                       progress=feedback.progress[-10:])
    except Exception:
        res["exception"] = traceback.format_exc()
out["torch_imported"] = "torch" in sys.modules
plugin.unload()
out["provider_after_unload"] = registry.providerById("maskcd") is not None
print("RESULT " + json.dumps(out, default=str), flush=True)
QgsProject.instance().clear()
app.exitQgis()
