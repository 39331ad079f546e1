"""accelerate multi-process inference (2 CPU ranks via torchrun, gloo) gives the same mosaic as one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import rasterio

from tests.conftest import HANG_TIMEOUT_S

SCRIPT = textwrap.dedent('''
    import os, sys, json
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {conftest_dir!r})
    from conftest import PixelDiffModel
    from maskcd.inference import MapOptions, map_rasters
    opts = MapOptions(model="test", tile=64, overlap=16, batch_size=5, workers=0, device="cpu")
    rr = map_rasters({a!r}, {b!r}, {prob!r}, {mask!r}, opts, model=PixelDiffModel(), progress=False)
    from maskcd.cli import release_process_group
    rank = int(os.environ.get("RANK", "0"))
    print(json.dumps({{"rank": rank, "main": rr.is_main, "windows": len(rr.windows), "done": rr.windows_done}}))
    release_process_group()
''')


def test_two_ranks_match_single_process(tmp_path, geotiff_writer, rng, image_maker, pixel_model):
    from maskcd.inference import MapOptions, map_rasters

    a_img = image_maker(rng, 150, 170)
    b_img = a_img.copy()
    b_img[:, 30:90, 40:120] = 255 - b_img[:, 30:90, 40:120]
    a = geotiff_writer(tmp_path / "a.tif", a_img)
    b = geotiff_writer(tmp_path / "b.tif", b_img)
    opts = MapOptions(model="test", tile=64, overlap=16, batch_size=3, workers=0, device="cpu")
    single = map_rasters(a, b, tmp_path / "p1.tif", tmp_path / "m1.tif", opts, model=pixel_model, progress=False)
    assert len(single.windows) == 12 and single.windows_done == 12

    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(conftest_dir=os.path.dirname(__file__), a=str(a), b=str(b),
                                    prob=str(tmp_path / "p2.tif"), mask=str(tmp_path / "m2.tif")))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with socket.socket() as s:  # a free port: a fixed one collides with other runs on the machine
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
         str(script)], capture_output=True, text=True, env=env, timeout=HANG_TIMEOUT_S, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 2 and {r["main"] for r in rows} == {True, False}
    assert all(r["windows"] == 12 for r in rows)
    # batches of 5, 5, 2 over two ranks: 7 + 5 windows, none duplicated (even_batches=True would give 7 + 10)
    assert sorted(r["done"] for r in rows) == [5, 7]
    with rasterio.open(tmp_path / "p1.tif") as d1, rasterio.open(tmp_path / "p2.tif") as d2:
        assert d1.transform == d2.transform
        np.testing.assert_array_equal(d1.read(1), d2.read(1))
    assert not list(tmp_path.glob(".*")), "temporary files left behind"
