"""Bad checkpoints get one line naming the file, what is wrong and the fix (``load_model`` and ``maskcd-map --model``).

Each case starts from a real saved ``maskcd-tiny`` folder and breaks one file the way it happens in practice: a pickle
that carries code, a download cut short, a hand-edited ``config.json``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from maskcd.cli.map import main as map_main
from maskcd.errors import CheckpointError, InputError
from maskcd.models import build_model, load_model
from maskcd.models.weights_io import read_config, read_state_dict

RAN = []


def _payload():  # what a malicious pickle would run on load; a safe load must never call it
    RAN.append(True)
    return {}


class _CodeCarrier:
    def __reduce__(self):
        return (_payload, ())


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    build_model("maskcd-tiny").save_pretrained(folder)
    return folder


def _copy(src, dst):
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


@pytest.fixture
def code_pickle(saved_tiny, tmp_path):
    folder = _copy(saved_tiny, tmp_path / "code_pickle")
    sd = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    sd["extra"] = _CodeCarrier()
    torch.save(sd, folder / "pytorch_model.bin")
    return folder, folder / "pytorch_model.bin", "is not a plain tensor checkpoint (it contains code that a safe load refuses): convert it to safetensors"


@pytest.fixture
def code_plain_pickle(saved_tiny, tmp_path):
    """A bare ``pickle.dump`` (protocol 4, not torch's format): torch's refusal does not name the global here."""
    import pickle

    folder = _copy(saved_tiny, tmp_path / "code_plain_pickle")
    (folder / "model.safetensors").unlink()
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"extra": _CodeCarrier()}, f, protocol=4)
    return folder, folder / "pytorch_model.bin", "is not a plain tensor checkpoint"


@pytest.fixture
def truncated_safetensors(saved_tiny, tmp_path):
    folder = _copy(saved_tiny, tmp_path / "truncated")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    return folder, folder / "model.safetensors", "is truncated or corrupt"


@pytest.fixture
def truncated_pickle(saved_tiny, tmp_path):
    folder = _copy(saved_tiny, tmp_path / "truncated_bin")
    sd = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(sd, folder / "pytorch_model.bin")
    data = (folder / "pytorch_model.bin").read_bytes()
    (folder / "pytorch_model.bin").write_bytes(data[: len(data) // 3])
    return folder, folder / "pytorch_model.bin", "is truncated or corrupt"


@pytest.fixture
def invalid_config(saved_tiny, tmp_path):
    folder = _copy(saved_tiny, tmp_path / "bad_config")
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text.rstrip().rstrip("}"))  # an edit that lost the closing brace
    return folder, folder / "config.json", "is not valid JSON"


CASES = ["code_pickle", "code_plain_pickle", "truncated_safetensors", "truncated_pickle", "invalid_config"]


@pytest.mark.parametrize("case", CASES)
def test_load_model_names_the_file_and_the_fix(case, request):
    folder, bad_file, what = request.getfixturevalue(case)
    RAN.clear()
    with pytest.raises(CheckpointError) as info:
        load_model(folder)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{bad_file} "), msg
    assert what in msg
    assert msg.rstrip().endswith(("convert it to safetensors", "download it again", "download the checkpoint again"))
    assert isinstance(info.value, InputError)
    assert not RAN  # the pickle's code never ran


@pytest.mark.parametrize("case", CASES)
def test_maskcd_map_model_dir_is_one_line_exit_2(case, request, tmp_path, geotiff_writer, capsys):
    folder, bad_file, what = request.getfixturevalue(case)
    img = np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    a = geotiff_writer(tmp_path / "a.tif", img)
    b = geotiff_writer(tmp_path / "b.tif", img)
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = map_main([str(a), str(b), "-o", str(tmp_path / "o.gpkg"), "--model", str(folder), "--device", "cpu",
                   "--workers", "0", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1, err
    assert err[0].startswith(f"maskcd-map: error: {bad_file} ") and what in err[0], err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_read_state_dict_and_read_config_accept_good_files(saved_tiny):
    stored = load_file(str(saved_tiny / "model.safetensors"))
    sd = read_state_dict(saved_tiny)
    assert set(sd) == set(stored) and all(torch.equal(sd[k], stored[k]) for k in stored)
    torch.save(stored, saved_tiny.parent / "plain.bin")
    sd = read_state_dict(saved_tiny.parent / "plain.bin")
    assert set(sd) == set(stored) and all(torch.equal(sd[k], stored[k]) for k in stored)
    assert read_config(saved_tiny)["maskcd_architecture"] == "maskcd"


def test_config_that_is_not_an_object(saved_tiny, tmp_path):
    folder = _copy(saved_tiny, tmp_path / "list_config")
    (folder / "config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(CheckpointError, match=r"config.json is not a JSON object .*download the checkpoint again"):
        load_model(folder)


def test_folder_without_weights(saved_tiny, tmp_path):
    folder = _copy(saved_tiny, tmp_path / "no_weights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no model.safetensors or pytorch_model.bin: copy the weights file"):
        load_model(folder)
