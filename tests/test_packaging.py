"""The package works when installed from a wheel (not only from an editable checkout), and the two dependency lists
(``pyproject.toml`` for pip, ``environment.yml`` for conda) agree."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from tests.conftest import HANG_TIMEOUT_S

REPO = Path(__file__).resolve().parents[1]


def _norm(text: str) -> tuple:
    req = Requirement(text)
    return canonicalize_name(req.name), tuple(sorted(req.extras)), str(SpecifierSet(str(req.specifier))), \
        str(req.marker or "")


def test_environment_yml_and_pyproject_list_the_same_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pip_side = list(project["dependencies"])
    for extra, reqs in project.get("optional-dependencies", {}).items():
        pip_side += reqs
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    conda, env_pip = [], []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            env_pip += [d for d in dep.get("pip", []) if not d.startswith("-e")]
        else:
            conda.append(dep)
    assert sorted(map(_norm, env_pip)) == sorted(map(_norm, pip_side)), (
        f"only in environment.yml: {sorted(set(map(_norm, env_pip)) - set(map(_norm, pip_side)))}; "
        f"only in pyproject.toml: {sorted(set(map(_norm, pip_side)) - set(map(_norm, env_pip)))}"
    )
    # conda itself supplies only the interpreter and pip, and the interpreter fits requires-python
    names = {re.split(r"[=<>! ]", c, maxsplit=1)[0] for c in conda}
    assert names == {"python", "pip"}, conda
    python = next(c for c in conda if c.startswith("python"))
    version = python.split("=", 1)[1].lstrip("=")
    assert SpecifierSet(project["requires-python"]).contains(f"{version}.0"), (python, project["requires-python"])


SCRIPT = r"""
import json, os, sys, time
import torch
import maskcd
from maskcd.models import build_model, list_models, count_parameters
from maskcd.models.registry import config_dir
names = list_models()
t0 = time.perf_counter()
params = {}
for name in names:
    with torch.device("meta"):
        params[name] = count_parameters(build_model(name))
print(json.dumps({"file": maskcd.__file__, "config_dir": str(config_dir()), "models": names, "params": params,
                  "build_s": time.perf_counter() - t0}))
"""


@pytest.fixture(scope="module")
def unpacked_wheel(tmp_path_factory):
    """Build the wheel from a copy of the sources (the checkout stays clean) and unpack it into a folder."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "maskcd", src / "maskcd", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = root / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w",
         str(dist), str(src)], capture_output=True, text=True, timeout=HANG_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    wheels = list(dist.glob("maskcd-*.whl"))
    assert len(wheels) == 1, wheels
    site = root / "site"
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extractall(site)
    return site


def _run_outside(site: Path, cwd: Path, args: list[str], timeout: float):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MASKCD_CONFIG_DIR")}
    env.update(PYTHONPATH=str(site), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_wheel_ships_presets_and_builds_every_one(unpacked_wheel, tmp_path):
    proc = _run_outside(unpacked_wheel, tmp_path, ["-c", SCRIPT], timeout=HANG_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(info["file"]).resolve().is_relative_to(unpacked_wheel.resolve()), info["file"]
    assert Path(info["config_dir"]).resolve().is_relative_to(unpacked_wheel.resolve()), info["config_dir"]
    presets = sorted(p.stem for p in (REPO / "maskcd" / "configs" / "models").glob("*.yaml"))
    assert presets and info["models"] == presets
    assert all(n > 0 for n in info["params"].values()), info["params"]


def test_wheel_runs_the_demo_from_anywhere(unpacked_wheel, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = _run_outside(unpacked_wheel, work, ["-m", "maskcd.cli.map", "--demo", "-o", "demo.gpkg", "--device", "cpu",
                                               "-q"], timeout=HANG_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r"F1 ([\d.]+)", proc.stdout)
    assert m and float(m.group(1)) > 0.8, proc.stdout
    assert {"demo.gpkg", "demo_change_prob.tif", "demo_change_mask.tif"} <= {p.name for p in work.iterdir()}


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_shipped_records_name_no_path_of_the_machine_that_made_them():
    """JSON records inside the package (the demo weights' config and training summary) travel with every wheel."""
    records = sorted((REPO / "maskcd").rglob("*.json"))
    assert any(p.name == "training.json" for p in records)
    for path in records:
        absolute = [s for s in _strings(json.loads(path.read_text())) if os.path.isabs(s) or s.startswith("~")]
        assert not absolute, f"{path.relative_to(REPO)} names local paths: {absolute}"


def test_train_demo_records_scratch_paths_relative_to_its_log_dir(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_demo", REPO / "pipelines" / "train_demo.py")
    train_demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_demo)
    assert train_demo._relative(str(tmp_path / "scenes" / "catalog.yaml"), tmp_path) == "<log-dir>/scenes/catalog.yaml"
    assert train_demo._relative(str(tmp_path.parent / "elsewhere"), tmp_path) == str(tmp_path.parent / "elsewhere")
    assert train_demo._relative(None, tmp_path) is None
