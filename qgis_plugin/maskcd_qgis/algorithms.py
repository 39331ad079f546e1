"""The maskcd Processing algorithms: "Map change" (``maskcd-map``) and "Map site catalog" (``maskcd-batch``).

Both run the tool of the configured environment as a subprocess (:mod:`.tool`); QGIS's Python never imports torch.
Works with QGIS 3.22 LTR and later 3.x releases (enum names are looked up in both their old and new homes).
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from pathlib import Path

from qgis.core import (
    Qgis,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputFile,
    QgsProcessingOutputRasterLayer,
    QgsProcessingOutputVectorLayer,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorLayer,
    QgsProject,
    QgsProviderRegistry,
)

from .tool import ToolError, find_tool, remove_partial, run_tool

TOOLS_SETTING = "MASKCD_TOOLS_FOLDER"
COREGISTER = ["tool default", "off", "global", "local"]
SCALE = ["tool default", "auto", "none", "percentile", "minmax"]
#: Post-processors must outlive the algorithm run (Processing calls them after it returns).
_KEEP_ALIVE: list = []


def _enum(old_owner, old_name: str, new_enum: str, new_name: str):
    """An enum value in its newer home (``Qgis.Enum.Name``, QGIS ≥ 3.36) or under its QGIS 3.22 name (``QgsX.Name``,
    removed in Qt 6 builds)."""
    newer = getattr(Qgis, new_enum, None)
    if newer is not None and hasattr(newer, new_name):
        return getattr(newer, new_name)
    return getattr(old_owner, old_name)


DOUBLE = _enum(QgsProcessingParameterNumber, "Double", "ProcessingNumberParameterType", "Double")
INTEGER = _enum(QgsProcessingParameterNumber, "Integer", "ProcessingNumberParameterType", "Integer")
ADVANCED = _enum(QgsProcessingParameterDefinition, "FlagAdvanced", "ProcessingParameterFlag", "Advanced")
FILE = _enum(QgsProcessingParameterFile, "File", "ProcessingFileParameterBehavior", "File")
POLYGONS = _enum(QgsProcessing, "TypeVectorPolygon", "ProcessingSourceType", "VectorPolygon")


def _advanced(param):
    param.setFlags(param.flags() | ADVANCED)
    return param


def tools_folder() -> str:
    """The plugin setting (Processing ▸ Options ▸ Providers ▸ maskcd), empty when unset."""
    try:
        from processing.core.ProcessingConfig import ProcessingConfig

        return ProcessingConfig.getSetting(TOOLS_SETTING) or ""
    except Exception:  # Processing not initialised (a bare script): fall back to MASKCD_BIN_DIR / PATH
        return ""


def layer_file(layer, what: str) -> str:
    """The file (or GDAL ``/vsi`` path) behind a layer, or a one-line error."""
    if layer is None:
        raise QgsProcessingException(f"{what}: no layer given; choose a raster layer")
    provider = layer.providerType()
    parts = QgsProviderRegistry.instance().decodeUri(provider, layer.source()) or {}
    path = parts.get("path") or layer.source().split("|")[0]
    if provider not in ("gdal", "ogr") or not (path.startswith("/vsi") or Path(path).exists()):
        raise QgsProcessingException(f"{what}: layer {layer.name()!r} is not a file GDAL reads ({provider}); "
                                     f"save it as a GeoTIFF first")
    return path


class _StyleAndOrder(QgsProcessingLayerPostProcessorInterface):
    """After a result layer is added: keep a change layer's stored default style, give the probability COG a colour
    ramp, and place the ``below`` layer (the COG, or the sites) right under the ``above`` one (the changes)."""

    def __init__(self, role: str, pair: dict):
        super().__init__()
        self.role, self.pair = role, pair

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 - QGIS API
        self.pair[self.role] = layer.id()
        renderer = layer.renderer() if hasattr(layer, "renderer") else None
        kind = renderer.type() if renderer is not None else None
        if self.role == "above" and kind == "singleSymbol":
            layer.loadDefaultStyle()  # a Processing default style replaced the GeoPackage's: restore it
        if kind == "singlebandgray":
            _probability_style(layer)
        project = context.project() or QgsProject.instance()
        if "above" in self.pair and "below" in self.pair:
            _place_under(project, self.pair["below"], self.pair["above"])


def _probability_style(layer) -> None:
    """Yellow-to-red ramp over 0–254 (255 is nodata), half transparent."""
    from qgis.core import QgsColorRampShader, QgsRasterShader, QgsSingleBandPseudoColorRenderer, QgsStyle

    ramp = QgsStyle.defaultStyle().colorRamp("YlOrRd")
    if ramp is None:
        return
    shader = QgsColorRampShader(0, 254)
    shader.setColorRampItemList([
        QgsColorRampShader.ColorRampItem(v, ramp.color(v / 254.0), f"{v / 254.0:.2f}") for v in (0, 64, 127, 191, 254)
    ])
    raster_shader = QgsRasterShader()
    raster_shader.setRasterShaderFunction(shader)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, raster_shader)
    renderer.setOpacity(0.6)
    layer.setRenderer(renderer)
    layer.triggerRepaint()


def _place_under(project, below_id: str, above_id: str) -> None:
    root = project.layerTreeRoot()
    above, below = root.findLayer(above_id), root.findLayer(below_id)
    if above is None or below is None:
        return
    parent = above.parent()
    index = parent.children().index(above)
    if below.parent() is parent and parent.children().index(below) == index + 1:
        return
    parent.insertChildNode(index + 1, below.clone())
    below.parent().removeChildNode(below)


def _load(context, uri: str, name: str, output: str, role: str, pair: dict) -> None:
    details = QgsProcessingContext.LayerDetails(name, context.project() or QgsProject.instance(), output)
    post = _StyleAndOrder(role, pair)
    _KEEP_ALIVE.append(post)
    del _KEEP_ALIVE[:-64]
    details.setPostProcessor(post)
    context.addLayerToLoadOnCompletion(uri, details)


class _ToolAlgorithm(QgsProcessingAlgorithm):
    """Shared parts: the tool run with progress, log, cancel and one-line errors."""

    TOOL = ""
    BAR = ""  # the description of the tool's own progress bar

    def group(self):
        return ""

    def groupId(self):
        return ""

    def _run(self, args: list[str], feedback, progress_span=(0.0, 95.0)):
        try:
            tool = find_tool(self.TOOL, tools_folder())
        except ToolError as err:
            raise QgsProcessingException(str(err)) from None
        cmd = [tool, *args]
        feedback.pushCommandInfo(" ".join(shlex.quote(c) for c in cmd))
        lo, hi = progress_span
        try:
            result = run_tool(
                cmd,
                on_line=feedback.pushConsoleInfo,
                on_progress=lambda pct: feedback.setProgress(lo + (hi - lo) * pct / 100.0),
                is_canceled=feedback.isCanceled,
                on_start=lambda pid: feedback.pushInfo(f"{self.TOOL} started (pid {pid})"),
                bar=self.BAR or self.TOOL,
            )
        except ToolError as err:
            raise QgsProcessingException(str(err)) from None
        return result

    @staticmethod
    def _extra(parameters, context, alg, name: str) -> list[str]:
        text = alg.parameterAsString(parameters, name, context).strip()
        try:
            return shlex.split(text) if text else []
        except ValueError as err:
            raise QgsProcessingException(f"additional arguments {text!r} cannot be parsed ({err}); check the "
                                         f"quotes") from None


class MapChangeAlgorithm(_ToolAlgorithm):
    """``maskcd-map``: two rasters → change polygons (styled GeoPackage) and probability / mask COGs."""

    TOOL = "maskcd-map"

    def name(self):
        return "mapchange"

    def displayName(self):
        return "Map change"

    def shortHelpString(self):
        return ("Maps the change between two co-located rasters with maskcd-map, run as a separate process from the "
                "maskcd environment (set its bin folder in Processing ▸ Options ▸ Providers ▸ maskcd; default: PATH). "
                "Writes a GeoPackage of change polygons (styled, graduated on mean probability) and, beside it, "
                "<name>_change_prob.tif and <name>_change_mask.tif. Outputs appear only when the run succeeds; "
                "Cancel ends the process and leaves nothing behind.")

    def createInstance(self):
        return MapChangeAlgorithm()

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer("BEFORE", "Before image (its grid is the reference)"))
        self.addParameter(QgsProcessingParameterRasterLayer("AFTER", "After image"))
        self.addParameter(QgsProcessingParameterString(
            "MODEL", "Model: preset, folder or Hugging Face id (empty: the maskcd-map default)", optional=True))
        self.addParameter(QgsProcessingParameterString("BANDS", "Bands read from both images, e.g. 1,2,3 "
                                                       "(empty: as the model records)", optional=True))
        self.addParameter(QgsProcessingParameterNumber("THRESHOLD", "Change probability threshold", DOUBLE, 0.5,
                                                       minValue=0.0, maxValue=1.0))
        self.addParameter(QgsProcessingParameterNumber("MIN_AREA", "Minimum polygon area (m²)", DOUBLE, 0.0,
                                                       minValue=0.0))
        self.addParameter(QgsProcessingParameterEnum("COREGISTER", "Co-registration (--coregister)", COREGISTER,
                                                     defaultValue=0))
        self.addParameter(QgsProcessingParameterString(
            "GSD", "Ground sampling distance (--gsd: native, model or metres; empty: tool default)", optional=True))
        self.addParameter(_advanced(QgsProcessingParameterEnum("SCALE", "Value scaling (--scale)", SCALE,
                                                               defaultValue=0)))
        self.addParameter(_advanced(QgsProcessingParameterString("DEVICE", "Device (auto, cpu, cuda, cuda:1)",
                                                                 optional=True)))
        self.addParameter(_advanced(QgsProcessingParameterString(
            "EXTRA", "Additional maskcd-map arguments (e.g. --tile 256 --overlap 0.5)", optional=True)))
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "Change polygons",
                                                                "GeoPackage (*.gpkg)"))
        self.addOutput(QgsProcessingOutputRasterLayer("PROBABILITY", "Change probability"))
        self.addOutput(QgsProcessingOutputRasterLayer("MASK", "Change mask"))

    def arguments(self, parameters, context) -> list[str]:
        """The ``maskcd-map`` options (everything but inputs and outputs)."""
        args = []
        model = self.parameterAsString(parameters, "MODEL", context).strip()
        if model:
            args += ["--model", model]
        bands = self.parameterAsString(parameters, "BANDS", context).strip()
        if bands:
            args += ["--bands", bands.replace(" ", "")]
        args += ["--threshold", repr(self.parameterAsDouble(parameters, "THRESHOLD", context))]
        args += ["--min-area", repr(self.parameterAsDouble(parameters, "MIN_AREA", context))]
        # co-registration, GSD and scaling are passed only when set, so the plugin also drives tools without them
        coreg = self.parameterAsEnum(parameters, "COREGISTER", context)
        if coreg:
            args += ["--coregister", COREGISTER[coreg]]
        gsd = self.parameterAsString(parameters, "GSD", context).strip()
        if gsd:
            args += ["--gsd", gsd]
        scale = self.parameterAsEnum(parameters, "SCALE", context)
        if scale:
            args += ["--scale", SCALE[scale]]
        device = self.parameterAsString(parameters, "DEVICE", context).strip()
        if device:
            args += ["--device", device]
        return args + self._extra(parameters, context, self, "EXTRA")

    def processAlgorithm(self, parameters, context, feedback):
        before = layer_file(self.parameterAsRasterLayer(parameters, "BEFORE", context), "Before image")
        after = layer_file(self.parameterAsRasterLayer(parameters, "AFTER", context), "After image")
        out = Path(self.parameterAsFileOutput(parameters, "OUTPUT", context))
        if out.suffix.lower() != ".gpkg":
            out = out.with_suffix(".gpkg")
        out.parent.mkdir(parents=True, exist_ok=True)
        prob, mask = (out.with_name(f"{out.stem}_change_{k}.tif") for k in ("prob", "mask"))
        args = self.arguments(parameters, context)
        # everything is written into a hidden staging folder and moved beside OUTPUT only when the run succeeded
        stage = Path(tempfile.mkdtemp(prefix=".maskcd-qgis-", dir=out.parent))
        try:
            result = self._run([before, after, "-o", str(stage / out.name), "--prob-out", str(stage / prob.name),
                                "--mask-out", str(stage / mask.name), "--overwrite", "-v", *args], feedback)
            if result.canceled:
                raise QgsProcessingException(f"canceled: {self.TOOL} (pid {result.pid}) was ended; nothing was "
                                             f"written")
            if result.returncode != 0:
                raise QgsProcessingException(f"{self.TOOL}: {result.error}")
            for name, final in ((prob.name, prob), (mask.name, mask), (out.name, out)):
                os.replace(stage / name, final)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        feedback.setProgress(100)
        pair: dict = {}
        _load(context, str(prob), f"{out.stem} change probability", "PROBABILITY", "below", pair)
        _load(context, f"{out}|layername=changes", f"{out.stem} changes", "OUTPUT", "above", pair)
        return {"OUTPUT": str(out), "PROBABILITY": str(prob), "MASK": str(mask)}


class MapCatalogAlgorithm(_ToolAlgorithm):
    """``maskcd-batch``: a site catalog (CSV / GeoPackage / GeoJSON / STAC) → one folder per site, merged layers."""

    TOOL = "maskcd-batch"
    BAR = "sites"

    def name(self):
        return "mapcatalog"

    def displayName(self):
        return "Map site catalog"

    def shortHelpString(self):
        return ("Maps every site of a catalog with maskcd-batch, run as a separate process from the maskcd "
                "environment. The catalog is a CSV, GeoPackage or GeoJSON table (site_id, before, after or site_id, "
                "date, path) or a STAC ItemCollection / Catalog JSON. Each site gets a folder with its GeoPackage, "
                "COGs, quicklook and STAC item; catalog.gpkg merges them and is added to the project. A rerun skips "
                "finished sites. Cancel ends the run and its workers; finished sites stay, unfinished ones leave "
                "nothing behind.")

    def createInstance(self):
        return MapCatalogAlgorithm()

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterFile(
            "CATALOG", "Site catalog (CSV, GeoPackage, GeoJSON or STAC JSON)", FILE,
            fileFilter="Site catalogs (*.csv *.gpkg *.geojson *.json);;All files (*.*)"))
        self.addParameter(QgsProcessingParameterString(
            "MODEL", "Model: preset, folder or Hugging Face id (empty: the maskcd-map default)", optional=True))
        self.addParameter(QgsProcessingParameterString("BANDS", "Bands, e.g. 1,2,3 (empty: as the model records)",
                                                       optional=True))
        self.addParameter(QgsProcessingParameterString(
            "ASSETS", "STAC assets: visual, or red,green,blue stacked (empty: visual, else red,green,blue)",
            optional=True))
        self.addParameter(QgsProcessingParameterString("SITE_KEY", "STAC item property naming the site (empty: "
                                                       "site_id, then mgrs:tile)", optional=True))
        self.addParameter(QgsProcessingParameterVectorLayer(
            "SITES", "STAC: site polygons with a site_id field (items grouped by intersection)", [POLYGONS],
            optional=True))
        self.addParameter(_advanced(QgsProcessingParameterNumber("WORKERS", "Worker processes (0: tool default)",
                                                                 INTEGER, 0, minValue=0)))
        self.addParameter(_advanced(QgsProcessingParameterBoolean("FORCE", "Redo finished sites", False)))
        self.addParameter(_advanced(QgsProcessingParameterString(
            "EXTRA", "Additional maskcd-batch arguments (e.g. --threshold 0.4 --device cuda)", optional=True)))
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Output folder"))
        self.addOutput(QgsProcessingOutputVectorLayer("CHANGES", "Changes of every site"))
        self.addOutput(QgsProcessingOutputFile("STAC", "STAC catalog of the results"))

    def processAlgorithm(self, parameters, context, feedback):
        catalog = self.parameterAsFile(parameters, "CATALOG", context)
        outdir = Path(self.parameterAsFileOutput(parameters, "OUTPUT", context))
        args = [catalog, "-o", str(outdir)]
        for name, flag in (("MODEL", "--model"), ("BANDS", "--bands"), ("ASSETS", "--assets"),
                           ("SITE_KEY", "--site-key")):
            value = self.parameterAsString(parameters, name, context).strip()
            if value:
                args += [flag, value]
        sites = self.parameterAsVectorLayer(parameters, "SITES", context)
        if sites is not None:
            args += ["--sites", layer_file(sites, "Site polygons")]
        workers = self.parameterAsInt(parameters, "WORKERS", context)
        if workers:
            args += ["--workers", str(workers)]
        if self.parameterAsBool(parameters, "FORCE", context):
            args.append("--force")
        args += self._extra(parameters, context, self, "EXTRA")
        existed = outdir.exists()
        result = self._run(args, feedback)
        if result.canceled:
            removed = remove_partial(outdir, remove_empty_root=not existed)
            raise QgsProcessingException(f"canceled: {self.TOOL} (pid {result.pid}) and its workers were ended; "
                                         f"finished sites are kept, {removed} unfinished temporaries removed")
        if result.returncode not in (0, 1):
            raise QgsProcessingException(f"{self.TOOL}: {result.error}")
        if result.returncode == 1:
            feedback.reportError(f"some sites failed; see {outdir / 'failures.csv'}", fatalError=False)
        feedback.setProgress(100)
        merged = outdir / "catalog.gpkg"
        outputs = {"OUTPUT": str(outdir), "STAC": str(outdir / "catalog.json")}
        if merged.is_file():
            pair: dict = {}
            _load(context, f"{merged}|layername=sites", "sites", "CHANGES", "below", pair)
            _load(context, f"{merged}|layername=changes", "changes (all sites)", "CHANGES", "above", pair)
            outputs["CHANGES"] = f"{merged}|layername=changes"
        return outputs
