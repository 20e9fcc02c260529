"""Where ``python -m tabor_tf.compare`` (no arguments) finds the demo victims: path resolution only
(the demo itself takes minutes and is not run here). The wheel itself is checked in
``test_packaging.py``."""

from pathlib import Path

import pytest

from tabor_tf import compare
from tabor_tf.errors import TaborError

REPO = Path(__file__).resolve().parent.parent


def _victims(root: Path, *names) -> Path:
    for name in names:
        (root / name).mkdir(parents=True)
        (root / name / "card.json").write_text("{}")
    return root


def test_the_demo_ships_inside_the_package(monkeypatch, tmp_path):
    monkeypatch.delenv(compare.DEMO_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # README command 1 works from any folder
    found = compare.find_demo_dir()
    assert found == REPO / "tabor_tf" / "assets" / "demo" == compare.DEMO_DIR
    assert found == Path(compare.__file__).resolve().parent / "assets" / "demo"  # package data, not the checkout
    assert {p.parent.name for p in found.glob("*/card.json")} >= {"clean", "square-br", "icon-tl"}
    assert all((p.parent / "model.h5").is_file() for p in found.glob("*/card.json"))
    assert not (REPO / "models" / "demo").exists()  # one copy only


def test_env_variable_comes_first_and_working_folder_is_not_searched(monkeypatch, tmp_path):
    monkeypatch.delenv(compare.DEMO_ENV, raising=False)
    work = tmp_path / "work"
    _victims(work / "models" / "demo", "a")  # a stray folder in the working directory is never scanned
    monkeypatch.chdir(work)
    assert compare.find_demo_dir() == compare.DEMO_DIR
    custom = _victims(tmp_path / "elsewhere", "b", "c")
    monkeypatch.setenv(compare.DEMO_ENV, str(custom))
    assert compare.find_demo_dir() == custom
    assert compare.demo_candidates() == [custom, compare.DEMO_DIR]


def test_no_demo_victims_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(compare, "DEMO_DIR", tmp_path / "site-packages" / "tabor_tf" / "assets" / "demo")
    empty = tmp_path / "empty"
    (empty / "x").mkdir(parents=True)  # a folder without card.json does not count
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(compare.DEMO_ENV, str(empty))
    with pytest.raises(TaborError, match="demo victims") as err:
        compare.find_demo_dir()
    text = str(err.value)
    assert compare.DEMO_ENV in text and str(empty) in text and "site-packages" in text
    assert "\n" not in text
