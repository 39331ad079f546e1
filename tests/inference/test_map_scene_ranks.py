"""``maskcd-map`` under ``torchrun`` (2 CPU ranks): the ranks agree on one run id and tile store, the outputs equal a
single-process run, and nothing is left behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
import torch

from maskcd.models import build_model

from tests.conftest import HANG_TIMEOUT_S


def test_two_rank_map_matches_one_process(tmp_path, geotiff_writer):
    rng = np.random.default_rng(11)
    a = rng.integers(20, 220, (3, 96, 160), dtype=np.uint8)
    b = a.copy()
    b[:, 20:60, 40:110] = 250
    geotiff_writer(tmp_path / "a.tif", a)
    geotiff_writer(tmp_path / "b.tif", b)
    torch.manual_seed(0)
    build_model("fc-ef").save_pretrained(tmp_path / "model")  # one set of weights for every rank
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    common = [str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "--model", str(tmp_path / "model"), "--tile", "64",
              "--overlap", "16", "--batch-size", "2", "--device", "cpu", "--workers", "0", "-q"]
    for sub in ("one", "two"):
        (tmp_path / sub).mkdir()
    single = subprocess.run([sys.executable, "-m", "maskcd.cli.map", *common, "-o", str(tmp_path / "one" / "o.gpkg")],
                            capture_output=True, text=True, env=env, timeout=HANG_TIMEOUT_S)
    assert single.returncode == 0, single.stderr[-3000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          port, "-m", "maskcd.cli.map", *common, "-o", str(tmp_path / "two" / "o.gpkg")],
                         capture_output=True, text=True, env=env, timeout=HANG_TIMEOUT_S, cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    for name in ("o_change_prob.tif", "o_change_mask.tif"):
        with rasterio.open(tmp_path / "one" / name) as d1, rasterio.open(tmp_path / "two" / name) as d2:
            np.testing.assert_array_equal(d1.read(1), d2.read(1))
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["o.gpkg", "o_change_mask.tif",
                                                                     "o_change_prob.tif"]
