"""Zip ``qgis_plugin/maskcd_qgis`` into an installable QGIS plugin: ``python qgis_plugin/build_zip.py [-o DIR]``.

The zip holds one top-level folder ``maskcd_qgis/`` (what Plugins ▸ Manage and Install Plugins ▸ Install from ZIP
expects) and is named ``maskcd_qgis-<version>.zip`` after ``metadata.txt``. Caches (``__pycache__``, ``*.pyc``) are
left out. Prints the zip's path.
"""

from __future__ import annotations

import argparse
import configparser
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLUGIN = HERE / "maskcd_qgis"


def build(outdir: Path) -> Path:
    meta = configparser.ConfigParser()
    meta.read(PLUGIN / "metadata.txt", encoding="utf-8")
    version = meta["general"]["version"]
    outdir.mkdir(parents=True, exist_ok=True)
    target = outdir / f"{PLUGIN.name}-{version}.zip"
    tmp = target.with_name(f".{target.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(PLUGIN.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                zf.write(path, path.relative_to(HERE).as_posix())
    tmp.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--outdir", type=Path, default=HERE.parent / "dist", help="where to write the zip")
    print(build(parser.parse_args(argv).outdir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
