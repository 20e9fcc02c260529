"""Where ``python -m tabor_tf.compare`` (no arguments) finds the demo victims: path resolution only
(the demo itself takes minutes and is not run here)."""

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


def test_source_checkout_finds_the_shipped_demo(monkeypatch, tmp_path):
    monkeypatch.delenv(compare.DEMO_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # README command 1 works from any folder of a checkout / editable install
    found = compare.find_demo_dir()
    assert found == REPO / "models" / "demo" == compare.DEMO_DIR
    assert {p.parent.name for p in found.glob("*/card.json")} >= {"clean", "square-br", "icon-tl"}


def test_installed_package_uses_env_or_working_folder(monkeypatch, tmp_path):
    # an installed wheel: the folder next to the package has no models/demo
    monkeypatch.setattr(compare, "DEMO_DIR", tmp_path / "site-packages" / "models" / "demo")
    monkeypatch.delenv(compare.DEMO_ENV, raising=False)
    work = tmp_path / "work"
    _victims(work / "models" / "demo", "a")
    monkeypatch.chdir(work)
    assert compare.find_demo_dir() == work / "models" / "demo"
    custom = _victims(tmp_path / "elsewhere", "b", "c")
    monkeypatch.setenv(compare.DEMO_ENV, str(custom))
    assert compare.find_demo_dir() == custom  # the variable comes first
    assert compare.demo_candidates()[0] == custom


def test_no_demo_victims_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(compare, "DEMO_DIR", tmp_path / "site-packages" / "models" / "demo")
    empty = tmp_path / "empty"
    (empty / "models" / "demo" / "x").mkdir(parents=True)  # a folder without card.json does not count
    monkeypatch.chdir(empty)
    monkeypatch.setenv(compare.DEMO_ENV, str(tmp_path / "missing"))
    with pytest.raises(TaborError, match="demo victims") as err:
        compare.find_demo_dir()
    text = str(err.value)
    assert compare.DEMO_ENV in text and str(tmp_path / "missing") in text and "site-packages" in text
    assert "\n" not in text
