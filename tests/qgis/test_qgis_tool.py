"""The plugin's subprocess runner (``qgis_plugin/maskcd_qgis/tool.py``), which needs neither QGIS nor torch.

Stand-in tools are small Python scripts that print what ``maskcd-map`` prints (tqdm bars redrawn with ``\\r``, log
lines, the one-line error) so parsing, environment, cancel and clean-up are checked in a second or two.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "qgis_plugin"))

from maskcd_qgis import tool  # noqa: E402


def fake_tool(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!{sys.executable}\nimport os, sys, time, subprocess\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def test_progress_log_lines_and_one_line_error(tmp_path, monkeypatch):
    exe = fake_tool(tmp_path / "bin", "maskcd-map", """
        sys.stderr.write("maskcd-map: 4 windows of 128 px\\n")
        sys.stderr.write("Loading weights: 100%|#####| 184/184 [00:00<00:00]\\r")  # another bar: ignored
        for pct in (0, 25, 50):
            sys.stderr.write(f"\\rmaskcd-map:  {pct}%|###    | 0.{pct}/1.00 MP [00:01<00:02, 0.20 MP/s]")
            sys.stderr.flush()
        sys.stderr.write("\\n")
        print("PYTHONPATH=" + os.environ.get("PYTHONPATH", "-") + " HOME=" + str("PYTHONHOME" in os.environ))
        sys.stderr.write("maskcd-map: error: after.tif does not exist; check the path\\n")
        sys.exit(2)
    """)
    monkeypatch.setenv("PYTHONPATH", "/usr/share/qgis/python")
    monkeypatch.setenv("PYTHONHOME", "/qgis")
    monkeypatch.setenv(tool.PYTHONPATH_ENV, "/dev/checkout")
    lines, progress, started = [], [], []
    result = tool.run_tool([str(exe)], on_line=lines.append, on_progress=progress.append, on_start=started.append)
    assert result.returncode == 2 and not result.canceled
    assert result.error == "after.tif does not exist; check the path"
    assert progress == [0.0, 25.0, 50.0]
    assert lines[0] == "maskcd-map: 4 windows of 128 px"
    assert "PYTHONPATH=/dev/checkout HOME=False" in lines  # QGIS's Python settings never reach the tool
    assert started == [result.pid]


def test_a_crash_reports_its_last_line(tmp_path):
    exe = fake_tool(tmp_path, "maskcd-batch", "print('working'); raise RuntimeError('boom')\n")
    result = tool.run_tool([str(exe)])
    assert result.returncode == 1 and result.error == "RuntimeError: boom"


def test_cancel_ends_the_tool_and_its_children(tmp_path):
    pidfile = tmp_path / "child.pid"
    exe = fake_tool(tmp_path, "maskcd-batch", f"""
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a Dask worker
        open({str(pidfile)!r}, "w").write(str(child.pid))
        sys.stderr.write("sites:  10%|#  | 1/10\\n"); sys.stderr.flush()
        time.sleep(60)
    """)
    progress = []
    t0 = time.monotonic()
    result = tool.run_tool([str(exe)], on_progress=progress.append, is_canceled=lambda: bool(progress), bar="sites")
    assert result.canceled and result.returncode < 0 and time.monotonic() - t0 < 30
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and "Z" not in _state(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists() or "Z" in _state(child), "the tool's child outlived the cancel"


def _state(pid: int) -> str:
    try:
        return next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State"))
    except (OSError, StopIteration):
        return "Z"


def test_find_tool_setting_env_and_path(tmp_path, monkeypatch):
    exe = fake_tool(tmp_path / "env" / "bin", "maskcd-map", "pass\n")
    monkeypatch.delenv(tool.BIN_ENV, raising=False)
    assert tool.find_tool("maskcd-map", str(tmp_path / "env" / "bin")) == str(exe)
    assert tool.find_tool("maskcd-map", str(tmp_path / "env")) == str(exe)  # the environment's root also works
    monkeypatch.setenv(tool.BIN_ENV, str(exe.parent))
    assert tool.find_tool("maskcd-map") == str(exe)
    monkeypatch.delenv(tool.BIN_ENV)
    monkeypatch.setenv("PATH", str(exe.parent))
    assert tool.find_tool("maskcd-map") == str(exe)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(tool.ToolError, match="maskcd-map is not on PATH; install maskcd"):
        tool.find_tool("maskcd-map")
    with pytest.raises(tool.ToolError, match=r"maskcd-batch is not in .*env; set the maskcd tools folder"):
        tool.find_tool("maskcd-batch", str(tmp_path / "env"))


def test_remove_partial_keeps_finished_sites(tmp_path):
    out = tmp_path / "out"
    (out / "done").mkdir(parents=True)
    for name in ("manifest.json", "changes.gpkg"):
        (out / "done" / name).write_text("x")
    (out / "half" / ".tmp-abc123").mkdir(parents=True)
    (out / "half" / ".tmp-abc123" / "pair.gpkg").write_text("x")
    (out / ".catalog.gpkg.tmp-99.gpkg").write_text("x")  # named by an older version
    (out / "done" / ".done.json.tmp-99").write_text("x")
    (out / ".catalog.gpkg.0123456789ab.tmp.gpkg").write_text("x")  # maskcd.io.atomic names
    (out / "done" / ".manifest.json.0123456789ab.tmp.json").write_text("x")
    assert tool.remove_partial(out) == 5
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["done", "done/changes.gpkg",
                                                                       "done/manifest.json"]
    empty = tmp_path / "new"
    (empty / "s" / ".tmp-1").mkdir(parents=True)
    (empty / ".maskcd-batch.lock").write_text("1")
    tool.remove_partial(empty, remove_empty_root=True)
    assert not empty.exists()
    assert os.listdir(tmp_path) == ["out"]


def test_build_zip_makes_an_installable_plugin_zip(tmp_path):
    import configparser
    import subprocess
    import zipfile

    out = subprocess.run([sys.executable, str(REPO / "qgis_plugin" / "build_zip.py"), "-o", str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout.strip()
    meta = configparser.ConfigParser()
    meta.read(REPO / "qgis_plugin" / "maskcd_qgis" / "metadata.txt")
    assert Path(out) == tmp_path / f"maskcd_qgis-{meta['general']['version']}.zip"
    names = zipfile.ZipFile(out).namelist()
    assert {"maskcd_qgis/__init__.py", "maskcd_qgis/metadata.txt", "maskcd_qgis/provider.py",
            "maskcd_qgis/algorithms.py", "maskcd_qgis/tool.py", "maskcd_qgis/plugin.py"} <= set(names)
    assert all(n.startswith("maskcd_qgis/") and "__pycache__" not in n for n in names)
    assert meta["general"]["qgisMinimumVersion"] == "3.22" and meta["general"]["hasProcessingProvider"] == "yes"
