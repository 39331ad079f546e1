"""A ``maskcd-batch`` killed with SIGKILL leaves no Dask worker process behind (they exit with their nanny)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux)")

SCRIPT = """
import json, os, time
from maskcd.batch.cluster import open_client
with open_client(None, None, 2, "cpu") as client:
    print(json.dumps(sorted(client.run(os.getpid).values())), flush=True)
    time.sleep(600)
"""


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_killed_batch_leaves_no_dask_worker(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    workers = []
    try:
        workers = json.loads(proc.stdout.readline())
        assert len(workers) == 2 and proc.pid not in workers
        assert all(_running(p) for p in workers)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        t0 = time.monotonic()
        while any(_running(p) for p in workers) and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        survivors = [p for p in workers if _running(p)]
        assert not survivors, f"Dask workers still alive 10 s after maskcd-batch was killed: {survivors}"
    finally:
        for pid in [proc.pid, *workers]:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        proc.stdout.close()
