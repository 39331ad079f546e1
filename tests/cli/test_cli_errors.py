"""Error contract of every ``maskcd-*`` CLI: only a MaskCDError is one line with exit code 2; a bug shows its traceback
and exits 1 (a ``ValueError`` is not disguised as bad input)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from maskcd.cli import one_line_errors
from maskcd.errors import CheckpointError, ConfigError, InputError, MaskCDError, ModelNotFoundError

from tests.conftest import HANG_TIMEOUT_S


def _raiser(exc):
    @one_line_errors("maskcd-x")
    def main():
        raise exc

    return main


@pytest.mark.parametrize("exc", [InputError("a.tif does not exist: check the path\nsecond line"),
                                 ModelNotFoundError("unknown model 'x'"), CheckpointError("c.bin is truncated"),
                                 ConfigError("unknown keys")])
def test_maskcd_errors_are_one_line_exit_2(exc, capsys):
    assert _raiser(exc)() == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"maskcd-x: error: {str(exc).splitlines()[0]}"]


@pytest.mark.parametrize("exc", [ValueError("bad shape"), FileNotFoundError(2, "No such file", "x"),
                                 KeyError("k"), RuntimeError("boom")])
def test_anything_else_prints_its_traceback_and_exits_1(exc, capsys):
    assert _raiser(exc)() == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert f"{type(exc).__name__}" in err and "raise exc" in err
    assert err.strip().splitlines()[-1].startswith("maskcd-x: unexpected error (a bug, not bad input)")


def test_model_not_found_is_a_maskcd_error_not_a_value_error():
    from maskcd.models import ModelNotFoundError as exported
    from maskcd.models import build_model, load_model

    assert exported is ModelNotFoundError
    assert issubclass(ModelNotFoundError, MaskCDError) and not issubclass(ModelNotFoundError, ValueError)
    with pytest.raises(ModelNotFoundError, match="valid names"):
        build_model("no-such-preset")
    with pytest.raises(ModelNotFoundError, match="neither a preset"):
        load_model("./no/such/folder")


@pytest.fixture
def pair(tmp_path, geotiff_writer):
    img = np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    return geotiff_writer(tmp_path / "a.tif", img), geotiff_writer(tmp_path / "b.tif", img)


FAST = ["--model", "maskcd-tiny", "--device", "cpu", "--workers", "0", "-q"]


@pytest.mark.parametrize("extra, needle", [
    (["--tile", "64", "--overlap", "40"], "invalid overlap 40: use at most half the tile 64 (32 px)"),
    (["--model", "no-such-preset"], "model 'no-such-preset' is neither a preset"),
])
def test_map_user_errors_are_one_line(pair, tmp_path, extra, needle, capsys):
    from maskcd.cli.map import main

    rc = main([str(pair[0]), str(pair[1]), "-o", str(tmp_path / "o.gpkg"), *FAST, *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err
    assert not list(tmp_path.glob("o*")) and not list(tmp_path.glob(".*"))


def test_map_config_with_unknown_blend_is_one_line(pair, tmp_path, capsys):
    from maskcd.cli.map import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("blend: feather\n")
    rc = main([str(pair[0]), str(pair[1]), "-o", str(tmp_path / "o.gpkg"), *FAST, "--config", str(cfg)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "invalid blend 'feather'" in err[0], err


def test_map_bug_shows_traceback_exit_1(pair, tmp_path, monkeypatch, capsys):
    import maskcd.inference

    def broken(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(maskcd.inference, "map_scene", broken)
    from maskcd.cli.map import main

    rc = main([str(pair[0]), str(pair[1]), "-o", str(tmp_path / "o.gpkg"), *FAST])
    err = capsys.readouterr().err
    assert rc == 1
    assert "Traceback" in err and "ValueError: an internal bug" in err


def test_models_cli_unknown_name_exit_2_in_a_process():
    proc = subprocess.run([sys.executable, "-m", "maskcd.cli.models", "no-such-preset"], capture_output=True,
                          text=True, timeout=HANG_TIMEOUT_S)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        proc.stderr.strip()] and "maskcd-models: error: unknown model 'no-such-preset'" in proc.stderr


@pytest.mark.parametrize("module, argv, expected", [
    ("map", ["b.tif", "a.tif", "-o", "o.gpkg", "--tile", "abc"], "argument --tile: invalid int value: 'abc'"),
    ("map", ["b.tif", "a.tif", "-o", "o.gpkg", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ("batch", ["sites.csv", "-o", "out", "--force", "--resume"], "not allowed with argument"),
    ("train", ["--epochs", "two"], "argument --epochs: invalid int value: 'two'"),
    ("test", [], "the following arguments are required"),
    ("dataset", ["scenes", "c.yaml", "-o", "d", "--tile", "x"], "argument --tile: invalid int value: 'x'"),
    ("models", ["--bogus"], "unrecognized arguments: --bogus"),
])
def test_usage_errors_are_one_line_exit_2(module, argv, expected, capsys):
    """A wrong flag is bad input like any other: one line naming it and pointing at --help, exit code 2 (argparse's
    own error printed the whole usage block first)."""
    import importlib

    main = importlib.import_module(f"maskcd.cli.{module}").main
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    prog = f"maskcd-{module}" + (" scenes" if module == "dataset" else "")
    assert len(err) == 1 and err[0].startswith(f"{prog}: error: ") and expected in err[0], err
    assert err[0].endswith(f"(see {prog} --help)") and captured.out == ""
