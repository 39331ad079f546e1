"""Batch mapping of site catalogs on Dask (``maskcd-batch``): catalogs, manifests, quicklooks and the runner.

* :func:`read_catalog` — CSV / GeoPackage / GeoJSON catalogs, pair or time-series layout (:mod:`.catalog`);
* :func:`run_batch` — one Dask task per site, resume by manifest, failure isolation, merged GeoPackage (:mod:`.runner`);
* :func:`process_site` — what a worker does for one site (:mod:`.worker`);
* :func:`write_quicklook` — before | after | overlay PNG (:mod:`.quicklook`).
"""

from maskcd.batch.catalog import Pair, SiteJob, read_catalog
from maskcd.batch.manifest import is_up_to_date, model_fingerprint, site_key
from maskcd.batch.quicklook import write_quicklook
from maskcd.batch.runner import BatchResult, run_batch, summary_table
from maskcd.batch.worker import process_site

__all__ = [
    "BatchResult",
    "Pair",
    "SiteJob",
    "is_up_to_date",
    "model_fingerprint",
    "process_site",
    "read_catalog",
    "run_batch",
    "site_key",
    "summary_table",
    "write_quicklook",
]
