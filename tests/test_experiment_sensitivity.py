"""``tabor-tf experiment sensitivity``: a 2x2 TABOR grid and 2 NC costs on the tiny victim, resume, bad grids."""

import json

import pytest

from tabor_tf import scanning
from tabor_tf.commands.experiment import main
from tabor_tf.errors import TaborError
from tabor_tf.experiments import sensitivity

# Table 2's values of l5 x l6; l1 = 1e-3 (Table 2's larger value) for all, so 20 steps find the square
GRID = ["--grid", "l5=1e-4,1e-6", "--grid", "l6=1e-2,1e-4"]
BUDGET = ["--tabor-preset", "fast", "--set", "steps=20", "--tabor-set", "eval_images=32", "--tabor-set", "l1=1e-3",
          "--tabor-set", "confirm_seeds=0", "--nc-set", "mini_batch=1", "--nc-costs", "1e-2,1e-3"]


def command(v, out, *extra):
    return ["sensitivity", v.model_path, "--data", v.data_path, "--truth", v.card_path, "--max-samples", "150",
            *GRID, *BUDGET, "--out", str(out), "--quiet", *extra]


def counting(monkeypatch, interrupt_at=None):
    """Count ``run_scan`` calls as ``(method, overrides)``; call number ``interrupt_at`` is a Ctrl-C."""
    calls = []
    real = scanning.run_scan

    def spy(*a, **k):
        calls.append((k["method"], dict(k["overrides"])))
        if len(calls) == interrupt_at:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(scanning, "run_scan", spy)
    return calls


def test_grid_run_summary_and_resume(tiny_infected_victim, tmp_path, monkeypatch, capsys):
    v = tiny_infected_victim
    out = tmp_path / "sens"
    calls = counting(monkeypatch)
    assert main(command(v, out)) == 0
    printed = capsys.readouterr()
    assert [m for m, _ in calls] == ["tabor"] * 4 + ["neural_cleanse"] * 2
    data = json.loads((out / "sensitivity.json").read_text(encoding="utf-8"))
    assert (out / "sensitivity.md").is_file() and "## Cells" in (out / "sensitivity.md").read_text(encoding="utf-8")
    assert len(list((out / "records").glob("*.json"))) == 6
    tabor = [c for c in data["cells"]["tabor"]]
    nc = data["cells"]["neural_cleanse"]
    assert len(tabor) == 4 and len(nc) == 2
    # the cells really ran with their own lambdas / cost (as the reports' settings say), the rest shared
    seen = {(c["report_settings"]["l5"], c["report_settings"]["l6"]) for c in tabor}
    assert seen == {(1e-4, 1e-2), (1e-4, 1e-4), (1e-6, 1e-2), (1e-6, 1e-4)}
    assert {c["report_settings"]["l1"] for c in tabor} == {1e-3}  # --tabor-set
    assert {c["report_settings"]["l2"] for c in tabor} == {1e-5}  # neither: the preset's value
    assert all(c["report_settings"]["steps"] == 20 and c["report_settings"]["preset"] == "fast" for c in tabor)
    assert sorted(c["report_settings"]["init_cost"] for c in nc) == [1e-3, 1e-2]
    for c in tabor:
        report = json.loads((out / c["report_dir"] / "report.json").read_text(encoding="utf-8"))
        assert report["settings"]["l5"] == c["vary"]["l5"] and report["settings"]["l6"] == c["vary"]["l6"]
        assert report["flagged_labels"] == c["flagged_labels"] and report["verdict"] == c["verdict"]
        aug = c["augmentation"]
        assert aug["label"] == 7 and aug["label_is"] == "target"
        assert aug["start"]["l5"] == c["vary"]["l5"] and aug["start"]["l1"] == 1e-3
        # final lambdas are the per-label ones of the report; augmentation never goes below the start
        assert aug["final"]["l1"] == pytest.approx(report["labels"][7]["parts"]["lambdas"]["mask_elastic"])
        assert aug["ratio"]["l1"] >= 1 - 1e-6
        # all six lambdas of a label scale by the same factor m^k
        assert max(aug["ratio"].values()) == pytest.approx(min(aug["ratio"].values()), rel=1e-3)
        assert 0.0 <= c["f1"] <= 1.0
    for c in nc:
        assert c["augmentation"]["start"]["init_cost"] == c["vary"]["init_cost"]
    # the target is found in most TABOR cells
    assert sum(7 in c["flagged_labels"] for c in tabor) >= 3
    # summary counts agree with the records
    for method, cells in (("tabor", tabor), ("neural_cleanse", nc)):
        s = data["summary"][method]
        assert s["cells"] == len(cells)
        assert sum(s["verdicts"].values()) == len(cells)
        assert s["cells_with_majority_verdict"] == max(sum(c["verdict"] == x for c in cells) for x in s["verdicts"])
        assert sum(s["symbols"].values()) == len(cells)
        f1 = [c["f1"] for c in cells]
        assert s["f1"]["mean"] == pytest.approx(sum(f1) / len(f1))
        assert s["f1"]["min"] == pytest.approx(min(f1)) and s["f1"]["max"] == pytest.approx(max(f1))
    aug = data["summary"]["tabor"]["augmentation"]
    assert aug["l5"]["start_spread"] == pytest.approx(100.0) and aug["l1"]["start_spread"] == pytest.approx(1.0)
    assert any("budget-reduced" in n for n in data["notes"])
    assert "TABOR summary (4 cells)" in printed.out and "budget-reduced" in printed.out
    assert printed.err.count("[sensitivity]") == 6 and "cell 4/6" in printed.err

    # same command: nothing is scanned again
    calls.clear()
    assert main(command(v, out)) == 0
    assert calls == []
    err = capsys.readouterr().err
    assert err.count("(done before)") == 6
    again = json.loads((out / "sensitivity.json").read_text(encoding="utf-8"))
    assert again["summary"]["tabor"]["verdicts"] == data["summary"]["tabor"]["verdicts"]

    # other NC costs: the finished 1e-2 cell is kept, 1e-4 is new; interrupted, the same command
    # redoes only that cell
    nc_only = command(v, out, "--methods", "nc", "--nc-costs", "1e-2,1e-4")
    calls = counting(monkeypatch, interrupt_at=1)
    assert main(nc_only) == 130
    calls = counting(monkeypatch)
    assert main(nc_only) == 0
    assert calls == [("neural_cleanse", {"steps": 20, "mini_batch": 1, "init_cost": 1e-4})]
    data = json.loads((out / "sensitivity.json").read_text(encoding="utf-8"))
    assert list(data["summary"]) == ["neural_cleanse"] and data["summary"]["neural_cleanse"]["cells"] == 2
    assert data["cells"]["neural_cleanse"][0] == next(c for c in nc if c["vary"]["init_cost"] == 1e-2)

    # a changed shared setting redoes the cells: the record's settings no longer match
    calls = counting(monkeypatch)
    assert main(command(v, out, "--methods", "nc", "--nc-costs", "1e-2", "--nc-set", "batch_size=16")) == 0
    assert calls == [("neural_cleanse", {"steps": 20, "mini_batch": 1, "batch_size": 16, "init_cost": 1e-2})]


@pytest.mark.parametrize("grid, message", [
    (["l7=1e-3"], "unknown lambda"),
    (["l1="], "comma-separated"),
    (["l1=1e-3,0"], "> 0"),
    (["l1=-1e-3"], "> 0"),
    (["l1=abc"], "not a number"),
    (["l1=1e-3", "l1=1e-5"], "given twice"),
    (["l1"], "expected NAME"),
])
def test_bad_grid(grid, message):
    with pytest.raises(TaborError, match=message):
        sensitivity.parse_grid(grid)


def test_defaults_and_bad_options(tmp_path, capsys):
    assert len(sensitivity.tabor_cells(sensitivity.parse_grid(None))) == 64
    assert sensitivity.parse_costs(None) == (1e-2, 1e-3, 1e-4, 1e-5)
    with pytest.raises(TaborError, match="> 0"):
        sensitivity.parse_costs("1e-3,0")
    with pytest.raises(TaborError, match="neither"):
        sensitivity.split_shared(["nonsense=1"])
    assert sensitivity.split_shared(["steps=7", "mini_batch=2"]) == ({"steps": 7}, {"steps": 7, "mini_batch": 2})
    # usage errors are one line and exit 2, before anything loads
    base = ["sensitivity", str(tmp_path / "missing.h5"), "--data", "synthetic", "--out", str(tmp_path / "o")]
    assert main(base + ["--grid", "l9=1"]) == 2
    assert "unknown lambda" in capsys.readouterr().err
    assert main(base + ["--grid", "l1=1e-3,1e-5", "--set", "l1=1e-4"]) == 2
    assert "varied by --grid" in capsys.readouterr().err
