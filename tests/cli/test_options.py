"""One option loader for maskcd-map, maskcd-batch and maskcd-train: defaults < --config < the flags given; bad files
and bad values are one line with exit code 2; MapOptions and TrainConfig check their own values.

The CLIs run in-process with their work function (``map_scene``, ``run_batch``, ``train``) replaced by a recorder,
so these tests see exactly the options each tool would run with.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from maskcd.errors import ConfigError
from maskcd.inference.options import MapOptions
from maskcd.options import check_keys, load_options, parse_bands, read_yaml
from maskcd.training.trainer import TrainConfig

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def recorded(monkeypatch):
    """Replace the three tools' work functions; returns the list of options they were called with."""
    import maskcd.batch.runner
    import maskcd.inference
    import maskcd.training.trainer
    from maskcd.inference.options import MapResult

    calls: list = []

    def fake_map_scene(before, after, out, options, progress=True):
        calls.append(options)
        return MapResult(gpkg=Path(out), prob_path=Path(out), mask_path=Path(out))  # n_pixels 0: nothing to report

    def fake_run_batch(catalog, outdir, options, **kwargs):
        calls.append(options)
        return SimpleNamespace(merged=None, stac_catalog=None, failed=[], failures_csv=None)

    def fake_train(cfg):
        calls.append(cfg)
        return {"best_f1": 0.5, "output_dir": "exp/x"}

    monkeypatch.setattr(maskcd.inference, "map_scene", fake_map_scene)
    monkeypatch.setattr(maskcd.batch.runner, "run_batch", fake_run_batch)
    monkeypatch.setattr(maskcd.batch.runner, "summary_table", lambda result: "table")
    monkeypatch.setattr(maskcd.training.trainer, "train", fake_train)
    return calls


@pytest.fixture
def defaults_dir(tmp_path, monkeypatch):
    """A packaged-defaults folder (``$MASKCD_CONFIG_DIR``) whose map.yaml differs from the MapOptions defaults."""
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "map.yaml").write_text("model: from-defaults\nthreshold: 0.3\ntile: 64\nbatch_size: 3\naoi: null\n")
    monkeypatch.setenv("MASKCD_CONFIG_DIR", str(folder))
    return folder


def _write(tmp_path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _map(tmp_path, *argv):
    from maskcd.cli.map import main

    return main(["a.tif", "b.tif", "-o", str(tmp_path / "o.gpkg"), *argv])


def _batch(tmp_path, *argv):
    from maskcd.cli.batch import main

    return main([str(tmp_path / "cat.csv"), "-o", str(tmp_path / "out"), *argv])


def _train(tmp_path, *argv):
    from maskcd.cli.train import main

    return main(list(argv))


def _one_line(capsys, prog: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{prog}: error: "), err
    return err[0]


# --- precedence ------------------------------------------------------------------------------------------------------


def test_map_defaults_then_config_then_flags(tmp_path, defaults_dir, recorded):
    cfg = _write(tmp_path, "tile: 128\nbatch-size: 5\nbands: 3,2,1\noverwrite: true\n")
    assert _map(tmp_path, "--config", str(cfg), "--batch-size", "7", "--gsd", "0.5", "--overlap", "32") == 0
    (opts,) = recorded
    assert opts.model == "from-defaults" and opts.threshold == 0.3  # packaged defaults file
    assert opts.tile == 128 and opts.bands == [3, 2, 1]  # --config over the defaults file
    assert opts.batch_size == 7 and opts.gsd == 0.5 and opts.overlap == 32  # the flags given over --config
    assert opts.overwrite is True  # --overwrite not given: the config's value stands
    assert opts.blend == MapOptions().blend  # in no file: the dataclass default


def test_map_without_config_uses_the_defaults_file(tmp_path, defaults_dir, recorded):
    assert _map(tmp_path, "--threshold", "0.7") == 0
    assert (recorded[0].model, recorded[0].tile, recorded[0].threshold) == ("from-defaults", 64, 0.7)


def test_batch_defaults_then_config_then_flags(tmp_path, defaults_dir, recorded):
    cfg = _write(tmp_path, "tile: 128\nthreshold: 0.4\nworkers: 3\nmin-area: 25\n")
    assert _batch(tmp_path, "--config", str(cfg), "--threshold", "0.6", "--workers", "2", "--bands", "1 2 3") == 0
    (opts,) = recorded
    assert opts.model == "from-defaults" and opts.batch_size == 3
    assert opts.tile == 128 and opts.min_area == 25.0
    assert opts.threshold == 0.6 and opts.bands == [1, 2, 3]
    # --workers sizes the Dask cluster; the per-site DataLoader readers come from the config's 'workers'
    assert opts.workers == 3
    assert _batch(tmp_path, "--config", str(cfg), "--loader-workers", "0") == 0
    assert recorded[1].workers == 0


def test_train_defaults_then_config_then_flags(tmp_path, recorded):
    cfg = _write(tmp_path, "model: maskcd-demo\nepochs: 3\nlearning_rate: 1.0e-3\ncrop: 64\nseed: 5\n"
                           "dataset: from-config\n")
    assert _train(tmp_path, "--config", str(cfg), "--epochs", "2", "--no-augment", "--clip-grad", "0") == 0
    (c,) = recorded
    assert isinstance(c, TrainConfig)
    assert (c.model, c.learning_rate, c.data.crop, c.dataset) == ("maskcd-demo", 1e-3, 64, "from-config")
    assert c.seed == 5 and c.data.seed == 5  # one option, both places
    assert c.epochs == 2 and c.data.augment is False and c.clip_grad is None  # flags given; 0 = off
    assert c.batch_size == TrainConfig(dataset="x").batch_size  # in no file: the dataclass default
    assert _train(tmp_path, "--config", str(cfg), "DS") == 0 and recorded[1].dataset == "DS"
    assert _train(tmp_path, "--config", str(cfg), "--dataset", "D2", "DS") == 0 and recorded[2].dataset == "D2"


def test_train_flags_absent_do_not_override_the_config(tmp_path, recorded):
    cfg = _write(tmp_path, "augment: false\nbatch_sampler: true\noverwrite: true\n")
    assert _train(tmp_path, "--config", str(cfg), "--dataset", "d") == 0
    c = recorded[0]
    assert c.data.augment is False and c.data.batch_sampler is True and c.overwrite is True


def test_the_shipped_training_recipes_load(recorded, tmp_path):
    for path in sorted((REPO / "configs").glob("train-*.yaml")):
        assert _train(tmp_path, "--config", str(path), "--dataset", "d") == 0, path
    assert [c.model for c in recorded] == ["maskcd-demo", "maskcd-swin-t"]


# --- bad files: one line, exit 2, naming the file and the key ---------------------------------------------------------

TOOLS = [("maskcd-map", _map), ("maskcd-batch", _batch), ("maskcd-train", _train)]


@pytest.mark.parametrize(("prog", "run"), TOOLS)
def test_unknown_key_names_the_file_the_key_and_the_nearest_key(tmp_path, capsys, recorded, prog, run):
    key, near = ("thresold", "threshold") if prog != "maskcd-train" else ("learning_rte", "learning_rate")
    cfg = _write(tmp_path, f"{key}: 0.5\n")
    argv = ["--config", str(cfg)] + (["--dataset", "d"] if prog == "maskcd-train" else [])
    assert run(tmp_path, *argv) == 2
    line = _one_line(capsys, prog)
    assert str(cfg) in line and f"unknown key {key!r} (did you mean {near!r}?)" in line
    assert not recorded


@pytest.mark.parametrize(("prog", "run"), TOOLS)
@pytest.mark.parametrize(("text", "needle"), [
    ("tile: [64\n", r"is not valid YAML \(line \d+: .*\): fix its syntax"),
    ("- 1\n- 2\n", r"must be a mapping of 'key: value' lines, not a list"),
])
def test_bad_yaml_names_the_file(tmp_path, capsys, recorded, prog, run, text, needle):
    cfg = _write(tmp_path, text)
    argv = ["--config", str(cfg)] + (["--dataset", "d"] if prog == "maskcd-train" else [])
    assert run(tmp_path, *argv) == 2
    line = _one_line(capsys, prog)
    assert f"config file {cfg} " in line and re.search(needle, line), line
    assert not recorded


@pytest.mark.parametrize(("prog", "run"), TOOLS)
def test_missing_config_names_the_file(tmp_path, capsys, recorded, prog, run):
    argv = ["--config", str(tmp_path / "nope.yaml")] + (["--dataset", "d"] if prog == "maskcd-train" else [])
    assert run(tmp_path, *argv) == 2
    assert f"config file {tmp_path / 'nope.yaml'} does not exist" in _one_line(capsys, prog)


@pytest.mark.parametrize(("prog", "run", "argv", "needle"), [
    ("maskcd-map", _map, ["--threshold", "1.5"], "invalid threshold 1.5: use a probability between 0 and 1"),
    ("maskcd-map", _map, ["--blend", "median"], "invalid blend 'median': use cosine | mean | crop"),
    ("maskcd-map", _map, ["--bands", "0,1"], "invalid bands '0,1': use 1-based band indices"),
    ("maskcd-batch", _batch, ["--scale", "log"], "invalid scale 'log': use auto | none | percentile | minmax"),
    ("maskcd-batch", _batch, ["--gsd", "-1"], "invalid gsd -1.0: use model, native or a positive pixel size"),
    ("maskcd-train", _train, ["--dataset", "d", "--batch-size", "0"], "invalid batch_size 0: use an integer >= 1"),
    ("maskcd-train", _train, ["--dataset", "d", "--optimizer", "sgd"], "invalid optimizer 'sgd': use adam | adamw"),
    ("maskcd-train", _train, [], "no dataset: pass --dataset"),
])
def test_bad_flag_values_are_one_line(tmp_path, capsys, recorded, prog, run, argv, needle):
    assert run(tmp_path, *argv) == 2
    assert needle in _one_line(capsys, prog)
    assert not recorded


def test_batch_config_may_not_set_per_site_outputs(tmp_path, capsys, recorded):
    cfg = _write(tmp_path, "mask_out: m.tif\naoi: a.gpkg\n")
    assert _batch(tmp_path, "--config", str(cfg)) == 2
    assert "'mask_out', 'aoi' cannot be set here (the tool sets them itself)" in _one_line(capsys, "maskcd-batch")


# --- the loader's parts -----------------------------------------------------------------------------------------------


def test_read_yaml_and_check_keys(tmp_path):
    assert read_yaml(_write(tmp_path, "")) == {}
    assert read_yaml(_write(tmp_path, "a-b: 1\n")) == {"a-b": 1}  # keys as written (alias names keep their dashes)
    with pytest.raises(ConfigError, match=r"^X: unknown keys 'tiel' \(did you mean 'tile'\?\), 'zzz'; valid keys: "):
        check_keys({"tiel": 1, "zzz": 2, "tile": 3}, ["tile", "overlap"], source="X")
    check_keys({"tile": 1}, ["tile"], source="X")


@pytest.mark.parametrize(("value", "bands"), [
    (None, None), ("3,2,1", [3, 2, 1]), ("3 2 1", [3, 2, 1]), ([4, 3, 2], [4, 3, 2]), (2, [2]), ([1.0], [1]),
])
def test_parse_bands(value, bands):
    assert parse_bands(value) == bands


@pytest.mark.parametrize("value", ["", "a,b", "0,1", [0], [1.5], True, {"r": 1}, "1,-2"])
def test_parse_bands_rejects(value):
    with pytest.raises(ConfigError, match="invalid bands .*: use 1-based band indices"):
        parse_bands(value)


def test_required_option_without_a_value():
    with pytest.raises(ConfigError, match="^need a dataset$"):
        load_options(TrainConfig, {}, required={"dataset": "need a dataset"})


# --- MapOptions and TrainConfig check themselves -----------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"tile": 0}, "invalid tile 0: use an integer >= 16"),
    ({"tile": 8}, "invalid tile 8"),
    ({"tile": "big"}, "invalid tile 'big'"),
    ({"overlap": -1}, "invalid overlap -1"),
    ({"overlap": 0.75}, "invalid overlap 0.75: use a fraction of the tile of at most 0.5"),
    ({"tile": 64, "overlap": 40}, "invalid overlap 40: use at most half the tile 64 (32 px)"),
    ({"batch_size": 0}, "invalid batch_size 0: use an integer >= 1"),
    ({"batch_size": 2.5}, "invalid batch_size 2.5"),
    ({"threshold": 0}, "invalid threshold 0: use a probability between 0 and 1 (exclusive)"),
    ({"threshold": 1.0}, "invalid threshold 1.0"),
    ({"threshold": "high"}, "invalid threshold 'high'"),
    ({"min_area": -1}, "invalid min_area -1: use an area in m² >= 0"),
    ({"simplify": -0.5}, "invalid simplify -0.5"),
    ({"blend": "max"}, "invalid blend 'max': use cosine | mean | crop"),
    ({"coregister": "yes"}, "invalid coregister 'yes': use off | global | local"),
    ({"scale": "log"}, "invalid scale 'log': use auto | none | percentile | minmax"),
    ({"gsd": "coarse"}, "invalid gsd 'coarse': use model, native or a positive pixel size in metres"),
    ({"gsd": 0}, "invalid gsd 0"),
    ({"workers": -1}, "invalid workers -1: use an integer >= 0"),
    ({"bands": [0, 1, 2]}, "invalid bands [0, 1, 2]: use 1-based band indices"),
    ({"device": "gpu"}, "invalid device 'gpu': use auto, cpu, cuda or cuda:N"),
    ({"overwrite": "yes"}, "invalid overwrite 'yes': use true or false"),
    ({"layer": ""}, "invalid layer ''"),
    ({"model": ""}, "invalid model ''"),
])
def test_map_options_reject_bad_values(kwargs, needle):
    with pytest.raises(ConfigError) as err:
        MapOptions(**kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_map_options_normalise_what_they_accept(tmp_path):
    opts = MapOptions(tile=64.0, overlap=32.0, bands="3,2,1", gsd="0.5", aoi=tmp_path / "a.gpkg", device="cuda:1")
    assert (opts.tile, opts.overlap, opts.bands, opts.gsd, opts.aoi) == (64, 32, [3, 2, 1], 0.5, str(tmp_path / "a.gpkg"))
    assert isinstance(opts.overlap, int) and MapOptions(gsd="Native").gsd == "native"
    assert MapOptions(overlap=0.5).overlap == 0.5 and MapOptions(overlap=0).overlap == 0


def test_map_scene_checks_options_changed_after_construction(tmp_path):
    from maskcd.inference import map_scene

    opts = MapOptions(model="maskcd-tiny")
    opts.threshold = 2.0
    with pytest.raises(ConfigError, match="invalid threshold 2.0"):
        map_scene("a.tif", "b.tif", tmp_path / "o.gpkg", opts)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"epochs": 0}, "invalid epochs 0: use an integer >= 1"),
    ({"learning_rate": 0}, "invalid learning_rate 0: use a positive number"),
    ({"mixed_precision": "fp8"}, "invalid mixed_precision 'fp8': use auto | no | bf16 | fp16"),
    ({"warmup_epochs": -1}, "invalid warmup_epochs -1: use an integer >= 0"),
    ({"lr_schedule": "iteration"}, "invalid lr_schedule 'iteration': use epoch | step"),
    ({"warmup_steps": 30}, "invalid warmup_steps 30: use 0 with lr_schedule epoch"),
    ({"lr_schedule": "step", "warmup_steps": 30, "warmup_epochs": 1},
     "invalid warmup_steps 30: use 0 when warmup_epochs"),
    ({"clip_grad": -1.0}, "invalid clip_grad -1.0"),
    ({"dataset": ""}, "invalid dataset ''"),
])
def test_train_config_rejects_bad_values(kwargs, needle):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**{"dataset": "d", **kwargs})
    assert needle in str(err.value)


def test_data_options_reject_bad_values():
    from maskcd.training.data import DataOptions

    with pytest.raises(ConfigError, match="invalid chips_per_site 0"):
        DataOptions(chips_per_site=0)
    with pytest.raises(ConfigError, match="invalid jitter -0.1"):
        DataOptions(jitter=-0.1)


# --- one implementation ------------------------------------------------------------------------------------------------


def test_the_three_tools_share_one_loader():
    """The issue asks for one implementation of option loading: each CLI builds its options with
    ``maskcd.options.load_options``, and none of them reads YAML or parses band lists itself."""
    for name in ("map", "batch", "train"):
        source = (REPO / "maskcd" / "cli" / f"{name}.py").read_text()
        assert "load_options(" in source, name
        assert not re.search(r"\bimport yaml\b|\byaml\.\w", source), name  # no YAML reading of their own
        assert "def _bands" not in source and "def load_config" not in source and "def _read_yaml" not in source
    readers = sorted(str(p.relative_to(REPO)) for p in (REPO / "maskcd").rglob("*.py") if "safe_load(" in p.read_text())
    # options.py reads option files, presets and aliases; scenes.py reads scene catalogs (YAML or JSON, lists too)
    assert readers == ["maskcd/data/scenes.py", "maskcd/options.py"], readers


# --- errors policy: a bad value in a model config is bad input, not a bug ------------------------------------------------


def test_bad_value_in_a_model_config_is_one_line(tmp_path, capsys):
    import json

    from maskcd.cli.map import main
    from maskcd.models import build_model, load_model
    from maskcd.models.registry import architecture

    with pytest.raises(ConfigError, match="SNUNet recipe must be 'ucd' or 'authors', got 'xyz'"):
        build_model("snunet", recipe="xyz")
    folder = tmp_path / "model"
    config = architecture("snunet").build_config()
    config.maskcd_architecture = "snunet"
    config.save_pretrained(folder)
    data = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**data, "recipe": "xyz"}))
    (folder / "model.safetensors").write_bytes(b"")  # the config is read (and refused) before the weights
    with pytest.raises(ConfigError, match=re.escape(str(folder / "config.json")) + ": SNUNet recipe"):
        load_model(folder)
    rc = main(["a.tif", "b.tif", "-o", str(tmp_path / "o.gpkg"), "--model", str(folder), "--device", "cpu", "-q"])
    line = _one_line(capsys, "maskcd-map")
    assert rc == 2 and str(folder / "config.json") in line and "recipe" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_bad_preset_files_are_one_line(tmp_path, monkeypatch):
    from maskcd.models import list_models
    from maskcd.models.registry import _read_preset

    (tmp_path / "models").mkdir()
    monkeypatch.setenv("MASKCD_CONFIG_DIR", str(tmp_path))
    bad = tmp_path / "models" / "broken.yaml"
    for text, needle in [("architecture: [snunet\n", "is not valid YAML"),
                         ("architecture: snunet\nconfig: [1, 2]\n", "'config' must be a mapping"),
                         ("config: {}\n", "has no 'architecture' key")]:
        bad.write_text(text)
        _read_preset.cache_clear()
        with pytest.raises(ConfigError, match=f"preset file {re.escape(str(bad))}.*{re.escape(needle)}"):
            list_models()
    _read_preset.cache_clear()


def test_every_map_option_has_one_flag_in_both_mapping_tools():
    from maskcd.cli.batch import PER_SITE_KEYS
    from maskcd.cli.batch import build_parser as batch_parser
    from maskcd.cli.map import build_parser as map_parser

    map_dests = {a.dest for a in map_parser()._actions}
    batch_dests = {a.dest for a in batch_parser()._actions}
    assert set(MapOptions.keys()) <= map_dests
    assert set(MapOptions.keys()) - set(PER_SITE_KEYS) - {"workers"} | {"loader_workers"} <= batch_dests
