"""Fidelity / correctness measures and the Table-1 layout (Markdown, CSV, summary) on constructed data."""

import csv
import io

import numpy as np
import pytest

from tabor_tf.fidelity import FAILURE, INCORRECT, SUCCESS, SUCCESS_WITH_ERRORS, correctness, trigger_fidelity
from tabor_tf.zoo_table import row_from_compare, sort_rows, summarize, summary_markdown, to_csv, to_markdown


def square(h, w, top, left, size):
    m = np.zeros((h, w), np.float32)
    m[top:top + size, left:left + size] = 1.0
    return m


def test_trigger_fidelity_on_constructed_masks():
    truth = square(16, 16, 12, 12, 4)  # 16 pixels
    exact = trigger_fidelity(truth, truth)
    assert exact == pytest.approx({"precision": 1.0, "recall": 1.0, "f1": 1.0})
    # a restored mask covering the true square plus 16 extra pixels: precision 1/2, recall 1
    bigger = truth.copy()
    bigger[0:4, 0:4] = 1.0
    f = trigger_fidelity(bigger, truth)
    assert f["precision"] == pytest.approx(0.5) and f["recall"] == pytest.approx(1.0)
    assert f["f1"] == pytest.approx(2 / 3)
    # half the true square found, nothing else: precision 1, recall 1/2; [H,W,1] accepted
    half = square(16, 16, 12, 12, 4)
    half[12:14] = 0.0
    f = trigger_fidelity(half[..., None], truth)
    assert (f["precision"], f["recall"]) == pytest.approx((1.0, 0.5))
    # soft values count by their weight
    soft = truth * 0.5
    f = trigger_fidelity(soft, truth)
    assert (f["precision"], f["recall"]) == pytest.approx((1.0, 0.5))
    # disjoint and empty masks
    assert trigger_fidelity(square(16, 16, 0, 0, 4), truth)["f1"] == 0.0
    assert trigger_fidelity(np.zeros((16, 16)), truth) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    with pytest.raises(ValueError):
        trigger_fidelity(np.zeros((8, 8)), truth)


@pytest.mark.parametrize("flagged, targets, symbol", [
    ([33], [33], SUCCESS),
    ([], [], SUCCESS),
    ([33, 4], [33], SUCCESS_WITH_ERRORS),
    ([3, 7, 1], [3, 7], SUCCESS_WITH_ERRORS),
    ([4], [33], INCORRECT),
    ([3], [3, 7], INCORRECT),  # only one of two targets
    ([], [33], FAILURE),
    ([5], [], FAILURE),  # false alarm on a clean model
])
def test_correctness_symbols(flagged, targets, symbol):
    assert correctness(flagged, targets) == symbol


def compare_record(name, targets, trigger, cells):
    """A compare.json-like dict: ``cells`` = {method: (flagged, f1_or_None)}."""
    measures = {}
    for method, (flagged, f1) in cells.items():
        per_target = [] if f1 is None else [
            {"target": t, "precision": f1, "recall": f1, "f1": f1, "score": -1.0} for t in targets]
        measures[method] = {"flagged_labels": flagged, "correctness": correctness(flagged, targets),
                            "anomaly_index": 3.0, "seconds": 60.0, "targets": per_target}
    triggers = [] if not targets else [dict(trigger, target=t) for t in targets]
    return {"name": name, "methods": list(cells), "measures": measures,
            "truth": {"name": name, "targets": list(targets), "triggers": triggers}}


ZOO = [
    compare_record("sq-br-6", [33], {"shape": "square", "position": "bottom-right", "size": 6},
                   {"tabor": ([33], 0.8), "neural_cleanse": ([], 0.2)}),
    compare_record("sq-tl-6", [33], {"shape": "square", "position": "top-left", "size": 6},
                   {"tabor": ([33, 2], 0.6), "neural_cleanse": ([5], 0.1)}),
    compare_record("icon-tl-8", [33], {"shape": "icon", "position": "top-left", "size": 8},
                   {"tabor": ([33], 0.9), "neural_cleanse": ([33], 0.5)}),
    compare_record("clean-1", [], {}, {"tabor": ([], None), "neural_cleanse": ([12], None)}),
    compare_record("clean-2", [], {}, {"tabor": ([], None), "neural_cleanse": ([], None)}),
]


def test_rows_sorted_like_table_1():
    rows = sort_rows([row_from_compare(c) for c in ZOO])
    assert [r.name for r in rows] == ["icon-tl-8", "sq-tl-6", "sq-br-6", "clean-1", "clean-2"]
    assert rows[0].size == 8 and rows[-1].clean and rows[-1].size is None


def test_markdown_and_csv():
    rows = [row_from_compare(c) for c in ZOO]
    md = to_markdown(rows, ["tabor", "neural_cleanse"])
    lines = md.strip().splitlines()
    assert len(lines) == 2 + len(ZOO)
    assert lines[0].count("|") == 4 + 4 * 2 + 1
    sq_br = next(l for l in lines if l.startswith("| sq-br-6"))
    cells = [c.strip() for c in sq_br.strip("|").split("|")]
    assert cells[1:4] == ["square", "bottom-right", "6"]
    assert cells[4:8] == ["0.80", "0.80", "0.80", SUCCESS] and cells[8:12] == ["0.20", "0.20", "0.20", FAILURE]
    clean_line = next(l for l in lines if l.startswith("| clean-1"))
    assert FAILURE in clean_line and "clean" in clean_line
    table = list(csv.DictReader(io.StringIO(to_csv(rows, ["tabor", "neural_cleanse"]))))
    assert len(table) == len(ZOO)
    by_name = {r["model"]: r for r in table}
    assert by_name["sq-tl-6"]["tabor_correctness"] == SUCCESS_WITH_ERRORS
    assert by_name["sq-tl-6"]["neural_cleanse_correctness"] == INCORRECT
    assert by_name["sq-tl-6"]["tabor_flagged"] == "33 2"
    assert by_name["clean-1"]["tabor_f1"] == "" and by_name["clean-1"]["neural_cleanse_flagged"] == "12"
    assert float(by_name["icon-tl-8"]["tabor_f1"]) == pytest.approx(0.9)


def test_summary_counts_mean_f1_false_alarms():
    rows = [row_from_compare(c) for c in ZOO]
    s = summarize(rows, ["tabor", "neural_cleanse"])
    assert (s["models"], s["infected_models"], s["clean_models"]) == (5, 3, 2)
    tabor, nc = s["methods"]["tabor"], s["methods"]["neural_cleanse"]
    assert tabor["counts"] == {SUCCESS: 4, SUCCESS_WITH_ERRORS: 1, INCORRECT: 0, FAILURE: 0}
    assert nc["counts"] == {SUCCESS: 2, SUCCESS_WITH_ERRORS: 0, INCORRECT: 1, FAILURE: 2}
    assert sum(nc["counts"].values()) == 5
    assert tabor["mean_f1"] == pytest.approx((0.8 + 0.6 + 0.9) / 3)
    assert nc["mean_f1"] == pytest.approx((0.2 + 0.1 + 0.5) / 3)
    assert tabor["false_alarms"] == 0 and nc["false_alarms"] == 1
    assert tabor["detected"] == 3 and nc["detected"] == 1
    assert tabor["seconds"] == pytest.approx(300.0)
    md = summary_markdown(s)
    assert "| TABOR | 4 | 1 | 0 | 0 | 3/3 | 0.77 | 0/2 | 5.0 min |" in md
    assert "| NC | 2 | 0 | 1 | 2 | 1/3 | 0.27 | 1/2 | 5.0 min |" in md


def test_two_targets_average_fidelity():
    rec = compare_record("two", [3, 7], {"shape": "square", "position": "top-left", "size": 4},
                         {"tabor": ([3, 7], 0.5)})
    rec["measures"]["tabor"]["targets"][1]["f1"] = 0.9
    row = row_from_compare(rec)
    assert row.targets == (3, 7) and row.cells["tabor"].f1 == pytest.approx(0.7)
    assert row.shape == "square+square" and row.cells["tabor"].correctness == SUCCESS
