"""One resolver for model references (``maskcd.models.reference``) and the lazy architecture table."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maskcd.batch.manifest import model_fingerprint
from maskcd.inference.pipeline import model_hash
from maskcd.models import build_model, load_model
from maskcd.models.reference import ModelRef, hash_model_folder, resolve_model
from maskcd.models.registry import (
    ARCHITECTURE_MODULES,
    ModelNotFoundError,
    architectures,
    config_dir,
    task_aliases,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def offline_cache(monkeypatch, tmp_path):
    """An offline Hugging Face cache in ``tmp_path``; returns ``put(repo_id, src_folder)`` that stores a snapshot."""
    import huggingface_hub.constants as c

    import maskcd.models.reference as reference

    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(reference, "_SNAPSHOTS", {})

    def put(repo_id: str, src: Path) -> Path:
        repo = cache / ("models--" + repo_id.replace("/", "--"))
        commit = "0123456789abcdef0123456789abcdef01234567"
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True)
        for f in src.iterdir():
            (snap / f.name).write_bytes(f.read_bytes())
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
        return snap

    return put


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fc-ef")
    torch.manual_seed(0)
    build_model("fc-ef").save_pretrained(folder)
    return folder


def test_preset_hashes_its_yaml_and_is_stable():
    ref = resolve_model("maskcd-tiny")
    yaml_path = config_dir() / "models" / "maskcd-tiny.yaml"
    assert (ref.id, ref.kind, ref.path, ref.hub_id, ref.format) == ("maskcd-tiny", "preset", yaml_path, None, "preset")
    assert ref.sha256 == hashlib.sha256(yaml_path.read_bytes()).hexdigest()
    assert resolve_model("maskcd-tiny") == ref and resolve_model("maskcd-tiny").sha256 == ref.sha256
    assert resolve_model("fc-ef").sha256 != ref.sha256


def test_folder_hash_covers_config_and_weights_only(saved_folder, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    for f in saved_folder.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    ref = resolve_model(str(folder))
    assert (ref.kind, ref.path, ref.format) == ("folder", folder, "maskcd")
    first = ref.sha256
    assert first == resolve_model(str(folder)).sha256 == hash_model_folder(saved_folder)
    (folder / "README.md").write_text("notes")
    assert resolve_model(str(folder)).sha256 == first
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert resolve_model(str(folder)).sha256 != first
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "threshold": 0.7}))
    assert len({first, resolve_model(str(folder)).sha256, hash_model_folder(folder)}) == 2


def test_load_model_manifest_and_run_metadata_share_one_hash(saved_folder):
    ref = resolve_model(str(saved_folder))
    model = load_model(saved_folder)
    assert model.maskcd_ref == ref
    assert model_fingerprint(str(saved_folder)) == {"id": str(saved_folder), "kind": "folder", "sha256": ref.sha256}
    assert model_hash(model) == ref.sha256[:16]
    # a preset's weights are random: the run metadata hashes the parameters, so two seeds differ
    torch.manual_seed(1)
    a = load_model("fc-ef")
    torch.manual_seed(2)
    b = load_model("fc-ef")
    assert a.maskcd_ref.kind == "preset" and model_hash(a) != model_hash(b)


@pytest.mark.parametrize(
    ("cfg", "fmt"),
    [
        ({"model_type": "mask2former", "architectures": ["Mask2FormerForUniversalSegmentation"]}, "legacy-maskcd"),
        ({"model_type": "upernet", "Backbone_type": "Swin-Diff-T"}, "legacy-minenetcd"),
        ({"model_name": "FC_EF", "input_nc": 3, "num_classes": 2}, "ucd"),
        ({"model_type": "bert"}, "unknown"),
    ],
)
def test_folder_format_is_detected_from_config(tmp_path, cfg, fmt):
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert resolve_model(str(tmp_path)).format == fmt


def test_hub_id_and_alias_resolve_to_the_cached_snapshot(saved_folder, offline_cache):
    snap = offline_cache("someone/fc-ef-demo", saved_folder)
    ref = resolve_model("someone/fc-ef-demo")
    assert (ref.kind, ref.hub_id, ref.path, ref.format) == ("hub", "someone/fc-ef-demo", snap, "maskcd")
    assert ref.sha256 == hash_model_folder(saved_folder)
    assert model_fingerprint("someone/fc-ef-demo")["sha256"] == ref.sha256

    alias = task_aliases()["mining"]
    alias_snap = offline_cache(alias.hub_id, saved_folder)
    ref = resolve_model("mining")
    assert (ref.id, ref.kind, ref.hub_id, ref.path) == ("mining", "alias", alias.hub_id, alias_snap)
    assert ref.sha256 == hash_model_folder(saved_folder)
    assert isinstance(ref, ModelRef)


def test_uncached_hub_id_offline_is_one_line_naming_the_fix(offline_cache):
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("nobody-has/this-model-xyz")
    msg = str(info.value)
    assert "\n" not in msg and "'nobody-has/this-model-xyz' is not in the local Hugging Face cache" in msg
    assert "hf download nobody-has/this-model-xyz --local-dir DIR" in msg


def test_unknown_reference_names_what_to_pass(tmp_path):
    with pytest.raises(ModelNotFoundError, match="neither a preset .* nor a Hub id"):
        resolve_model(str(tmp_path / "no-such-folder"))


def test_architecture_table_matches_the_modules_that_register():
    archs = architectures()
    assert set(archs) == set(ARCHITECTURE_MODULES)
    for name, module in ARCHITECTURE_MODULES.items():
        assert archs[name].model_cls.__module__ == module, name


def test_building_one_preset_imports_only_its_model_module():
    code = (
        "import sys\n"
        "from maskcd.models import build_model, list_models\n"
        "assert len(list_models()) > 40\n"
        "print(' '.join(sorted(sys.modules)))\n"
        "build_model('fc-ef')\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, check=True)
    listed, built = (
        {m for m in line.split() if m.startswith("maskcd.models.")} - {"maskcd.models.base", "maskcd.models.registry", "maskcd.models.weights_io"}
        for line in out.stdout.splitlines()
    )
    assert listed == set(), sorted(listed)
    assert "maskcd.models.zoo.fc_ef" in built
    unrelated = set(ARCHITECTURE_MODULES.values()) - {"maskcd.models.zoo.fc_ef"}
    assert not built & (unrelated | {"maskcd.models.ucd", "maskcd.models.vmamba"}), sorted(built)
