"""Batch mapping of site catalogs on Dask (``maskcd-batch``): catalogs, manifests, quicklooks and the runner.

* :func:`read_catalog` — CSV / GeoPackage / GeoJSON catalogs, pair or time-series layout (:mod:`.catalog`);
* :func:`run_batch` — one Dask task per site, resume by manifest, failure isolation, merged GeoPackage (:mod:`.runner`);
* :func:`process_site` — what a worker does for one site (:mod:`.worker`), reported as a :class:`SiteReport` with a
  :class:`PairReport` per pair (:mod:`.report`);
* :mod:`.cluster` (the Dask cluster), :mod:`.merge` (``catalog.gpkg``), :mod:`.summary` (``report.json``,
  ``failures.csv``, the ``sites`` layer, :func:`summary_table`);
* :func:`write_quicklook` — before | after | overlay PNG (:mod:`.quicklook`).
"""

from maskcd.batch.catalog import Pair, SiteJob, read_catalog
from maskcd.batch.manifest import is_up_to_date, model_fingerprint, site_key
from maskcd.batch.quicklook import write_quicklook
from maskcd.batch.report import PairReport, SiteReport
from maskcd.batch.runner import BatchResult, run_batch, summary_table
from maskcd.batch.worker import process_site

__all__ = [
    "BatchResult",
    "Pair",
    "PairReport",
    "SiteJob",
    "SiteReport",
    "is_up_to_date",
    "model_fingerprint",
    "process_site",
    "read_catalog",
    "run_batch",
    "site_key",
    "summary_table",
    "write_quicklook",
]
