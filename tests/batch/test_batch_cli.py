"""``maskcd-batch`` command line without a cluster: option layering, one-line errors, GPU resource checks."""

from __future__ import annotations

import os

import pytest

from maskcd.batch.cluster import check_gpu_workers
from maskcd.batch.report import SiteReport
from maskcd.batch.runner import BatchResult, summary_table
from maskcd.cli.batch import build_parser, main, options_from_args
from maskcd.errors import InputError


def test_config_yaml_then_flags_override(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: maskcd-tiny\ntile: 128\nthreshold: 0.3\nbands: 3,2,1\nmin-area: 25\n")
    args = build_parser().parse_args(["cat.csv", "-o", "out", "--config", str(cfg), "--threshold", "0.6",
                                      "--overlap", "32"])
    opts = options_from_args(args)
    assert (opts.model, opts.tile, opts.threshold, opts.bands, opts.min_area, opts.overlap) == (
        "maskcd-tiny", 128, 0.6, [3, 2, 1], 25.0, 32)
    # per-site outputs are the runner's business
    assert opts.prob_out is None and opts.mask_out is None and opts.aoi is None


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("tresh: 0.5\n", "unknown key 'tresh' (did you mean 'threshold'?)"),
        ("prob_out: x.tif\n", "'prob_out' cannot be set here"),
        ("- a\n- b\n", "must be a mapping"),
        ("threshold: 1.5\n", "invalid threshold 1.5"),
        ("model: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(tmp_path, capsys, yaml_text, message):
    (tmp_path / "cat.csv").write_text("site_id,before,after\ns,a.tif,b.tif\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    assert main([str(tmp_path / "cat.csv"), "-o", str(tmp_path / "out"), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("maskcd-batch: error:") and message in err[0]
    assert not (tmp_path / "out").exists()


def test_bad_catalog_and_workers_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing.csv"), "-o", str(tmp_path / "out"), "--model", "maskcd-tiny"]) == 2
    assert "missing.csv does not exist" in capsys.readouterr().err
    (tmp_path / "cat.csv").write_text("site_id,before,after\ns,a.tif,b.tif\n")
    assert main([str(tmp_path / "cat.csv"), "-o", str(tmp_path / "out"), "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_cluster_workers_and_loader_workers_are_separate():
    args = build_parser().parse_args(["c", "-o", "o", "--workers", "3", "--loader-workers", "0"])
    assert args.workers == 3 and options_from_args(args).workers == 0
    args = build_parser().parse_args(["c", "-o", "o", "--loader-workers", "0", "--workers", "3"])
    assert args.workers == 3 and options_from_args(args).workers == 0


def test_resume_and_force_are_exclusive():
    assert build_parser().parse_args(["c", "-o", "o"]).force is False
    assert build_parser().parse_args(["c", "-o", "o", "--force"]).force is True
    with pytest.raises(SystemExit):
        build_parser().parse_args(["c", "-o", "o", "--force", "--resume"])


class _SchedulerInfo:
    """Stands in for a Client: only ``scheduler_info`` is consulted."""

    def __init__(self, resources):
        self._workers = {f"tcp://w{i}": {"resources": r} for i, r in enumerate(resources)}

    def scheduler_info(self):
        return {"workers": self._workers}


def test_cuda_needs_a_worker_with_a_gpu_resource():
    check_gpu_workers(_SchedulerInfo([{}, {"GPU": 1}]))
    with pytest.raises(InputError, match="--resources GPU=1"):
        check_gpu_workers(_SchedulerInfo([{}, {}]))


def test_worker_device_picks_one_gpu_per_worker(monkeypatch):
    import distributed
    import torch

    from maskcd.batch.worker import worker_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(distributed, "get_worker", lambda: type("W", (), {"name": 3})())
    assert worker_device("cuda") == "cuda:1"
    assert worker_device("cuda:0") == "cuda:0" and worker_device("cpu") == "cpu"


def test_summary_table_lists_every_site_and_totals():
    result = BatchResult(sites=[
        SiteReport("a", "mapped", n_pairs=1, n_polygons=3, changed_km2=0.5, seconds=2.0, n_pixels=4_000_000,
                   pairs=[{"layer": "changes", "seconds": 2.0}]),
        SiteReport("b", "skipped", n_pairs=2, n_polygons=4, changed_km2=0.25),
        SiteReport.failure("c", "InputError: c.tif is not a raster"),
    ], seconds=3.0)
    lines = summary_table(result).splitlines()
    assert lines[0].split() == ["site_id", "status", "pairs", "polygons", "changed_km2", "seconds", "MP/s", "note"]
    assert lines[2].split() == ["a", "mapped", "1", "3", "0.5000", "2.0", "2.00"]
    assert lines[3].split()[:2] == ["b", "skipped"] and "c.tif is not a raster" in lines[4]
    assert lines[-1].split()[:8] == ["total", "1", "mapped,", "1", "skipped,", "1", "failed", "3"]


def test_a_second_run_on_the_same_outdir_is_refused(tmp_path):
    from maskcd.batch.runner import LOCK_NAME, _outdir_lock, run_batch
    from maskcd.inference.options import MapOptions

    (tmp_path / "cat.csv").write_text("site_id,before,after\ns,a.tif,b.tif\n")
    out = tmp_path / "out"
    out.mkdir()
    with _outdir_lock(out):
        assert (out / LOCK_NAME).read_text() == str(os.getpid())
        with pytest.raises(InputError, match=r"another maskcd-batch run \(pid \d+\) is writing"):
            run_batch(tmp_path / "cat.csv", out, MapOptions(model="maskcd-tiny"), progress=False)
    assert not (out / "s").exists() and not (out / "failures.csv").exists()
    with _outdir_lock(out):  # released on exit
        pass
