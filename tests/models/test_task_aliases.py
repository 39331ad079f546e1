"""Task aliases (``--model mining`` ...) resolve to the published checkpoints, offline errors name the Hub id."""

from __future__ import annotations

import pytest

from maskcd.models import load_model
from maskcd.models.registry import ModelNotFoundError, task_aliases

EXPECTED = {
    "mining": "HZDR-FWGEL/UCD-MNCD256-ChangeFFT",
    "buildings": "ericyu/MaskCD_LEVIRCD_Cropped256",
    "landslides": "ericyu/MaskCD_GVLM_Cropped_256",
    "cropland": "ericyu/MaskCD_CLCD_Cropped_256",
    "urban": "ericyu/MaskCD_SYSU_CD",
}


def test_aliases_name_the_published_checkpoints():
    aliases = task_aliases()
    assert {name: a.hub_id for name, a in aliases.items()} == EXPECTED
    assert "F1 .6963" in aliases["mining"].source


@pytest.fixture
def empty_offline_cache(monkeypatch, tmp_path):
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))


@pytest.mark.parametrize("alias", sorted(EXPECTED))
def test_uncached_alias_fails_offline_like_its_hub_id(alias, empty_offline_cache, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no folder named like the alias
    with pytest.raises(ModelNotFoundError) as by_alias:
        load_model(alias)
    with pytest.raises(ModelNotFoundError) as by_id:
        load_model(EXPECTED[alias])
    assert str(by_alias.value) == str(by_id.value)
    assert EXPECTED[alias] in str(by_alias.value) and "\n" not in str(by_alias.value)


def test_maskcd_map_with_uncached_default_alias_names_the_id(empty_offline_cache, tmp_path, capsys, geotiff_writer):
    import numpy as np

    from maskcd.cli.map import main

    rng = np.random.default_rng(0)
    a = geotiff_writer(tmp_path / "a.tif", rng.integers(0, 255, (3, 32, 32), dtype=np.uint8))
    b = geotiff_writer(tmp_path / "b.tif", rng.integers(0, 255, (3, 32, 32), dtype=np.uint8))
    rc = main([str(a), str(b), "-o", str(tmp_path / "o.gpkg"), "--device", "cpu", "--workers", "0", "-q"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "HZDR-FWGEL/UCD-MNCD256-ChangeFFT" in err and "hf download" in err
    assert not (tmp_path / "o.gpkg").exists()


def test_maskcd_models_published_lists_aliases_with_source_rows(capsys):
    from maskcd.cli.models import main

    assert main(["--published"]) == 0
    out = capsys.readouterr().out
    for alias, hub_id in EXPECTED.items():
        line = next(l for l in out.splitlines() if l.startswith(alias + " "))
        assert hub_id in line
    assert "MineNetCD256" in out and ".6963" in out
