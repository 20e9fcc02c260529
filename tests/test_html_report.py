"""report.html / compare page: self-contained, every flagged label present, images decodable."""

import base64
import re
from html.parser import HTMLParser

import cv2
import numpy as np

from tabor_tf.html_report import anomaly_svg, render_compare_html, write_report_html
from tabor_tf.outliers import mad_test
from tabor_tf.report import ReportContext, png_bytes, to_uint8_image, write_report
from tabor_tf.results import LabelResult, ScanResult


class Page(HTMLParser):
    """Collects ids, img sources, classes of SVG circles and every URL-like attribute."""

    def __init__(self, text):
        super().__init__()
        self.ids, self.imgs, self.circles, self.urls, self.tags = set(), [], [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.imgs.append(a)
        if tag == "circle":
            self.circles.append(a)
        for key in ("src", "href"):
            if key in a:
                self.urls.append(a[key])


def scan_result(scores):
    rng = np.random.default_rng(1)
    labels = [
        LabelResult(label=k, mask=rng.uniform(0, 1, (6, 6)).astype(np.float32),
                    pattern=rng.uniform(0, 255, (6, 6, 3)).astype(np.float32), score=float(s), attack_success=1.0,
                    l1=3.0, steps=5, stop_reason="converged", seconds=0.1, parts={"A": float(s)})
        for k, s in enumerate(scores)
    ]
    return ScanResult(method="tabor", labels=labels, mad=mad_test(scores), seconds=2.0, settings={"preset": "fast"})


CTX = ReportContext(model={"path": "/models/victim<1>.h5", "sha256": "f" * 64, "format": "keras3-h5",
                           "input_shape": [6, 6, 3], "num_classes": 8, "output_kind": "logits"},
                    data={"path": "/d", "format": "npz", "samples": 10, "labelled": True},
                    preprocess={"mode": "raw", "clean_accuracy": 0.3, "accuracies_by_mode": {"raw": 0.3},
                                "warnings": ["LOW CLEAN ACCURACY: 30.0%"]}, seed=0)


def decode_png(uri):
    assert uri.startswith("data:image/png;base64,")
    buf = np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    assert img is not None
    return img


def test_report_html_references_every_flagged_label(tmp_path):
    scores = [10.0, 10.4, 1.0, 9.6, 10.1, 0.5, 9.9, 10.2]  # labels 2 and 5 are low outliers
    result = scan_result(scores)
    report = write_report(result, tmp_path, CTX)
    assert sorted(report["flagged_labels"]) == [2, 5]
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    for label in report["flagged_labels"]:
        assert f"flagged-{label}" in page.ids
    assert {f"label-{k}" for k in range(8)} <= page.ids
    assert "verdict" in page.ids and "INFECTED" in text
    # self-contained: no scripts, every image inline, no external URL
    assert "script" not in page.tags
    assert page.imgs and all(i["src"].startswith("data:image/png;base64,") for i in page.imgs)
    assert not [u for u in page.urls if re.match(r"(https?:|//|file:)", u)]
    # 3 large images per flagged label + 2 per grid cell, all decodable to the label's 6x6 image
    assert len(page.imgs) == 3 * 2 + 2 * 8
    for img in page.imgs:
        assert decode_png(img["src"]).shape[:2] == (6, 6)
    # the anomaly plot: one dot per label, flagged ones marked
    flagged_dots = sorted(int(c["data-label"]) for c in page.circles if c.get("class") == "flagged")
    assert flagged_dots == [2, 5] and len(page.circles) == 8
    assert "LOW CLEAN ACCURACY" in text
    assert "victim&lt;1&gt;.h5" in text  # names are escaped


def test_clean_report_html(tmp_path):
    report = write_report(scan_result([10.0, 10.4, 9.7, 9.6, 10.1, 10.3]), tmp_path, CTX)
    page = Page((tmp_path / "report.html").read_text(encoding="utf-8"))
    assert report["flagged_labels"] == []
    assert not [i for i in page.ids if i.startswith("flagged-")]
    assert not [c for c in page.circles if c.get("class") == "flagged"]
    # regenerating from report.json alone gives the same page body
    before = (tmp_path / "report.html").read_text(encoding="utf-8")
    write_report_html(tmp_path)
    assert (tmp_path / "report.html").read_text(encoding="utf-8") == before


def test_anomaly_svg_band_and_degenerate_input():
    svg = anomaly_svg([(0, 1.0, False), (1, 1.0, False), (2, 1.0, False)], median=1.0, mad=0.0, threshold=2.0)
    assert svg.startswith("<svg") and svg.endswith("</svg>") and "nan" not in svg.lower()
    svg = anomaly_svg([(0, 5.0, False), (1, -3.0, True), (2, 4.0, False), (3, float("nan"), False)],
                      median=4.5, mad=1.0, threshold=2.0, score_name="A")
    assert svg.count("<circle") == 3 and "median − 2.000·MAD" in svg


def test_compare_page_shows_truth_and_each_method():
    mask = np.zeros((6, 6), np.float32)
    mask[4:6, 4:6] = 1
    png = png_bytes(to_uint8_image(mask, is_mask=True))
    compare = {
        "model": {"path": "/z/infected.h5"},
        "methods": ["tabor", "neural_cleanse"],
        "report_dirs": {"tabor": "tabor", "neural_cleanse": "nc"},
        "reports": {"tabor": {"verdict": "infected", "flagged_labels": [3], "anomaly_index": 4.0, "seconds": 3},
                    "neural_cleanse": {"verdict": "clean", "flagged_labels": [], "anomaly_index": 1.0, "seconds": 9}},
        "truth": {"targets": [3]},
        "measures": {"tabor": {"correctness": "●", "targets": [{"target": 3, "precision": 0.8, "recall": 1.0,
                                                                 "f1": 0.89, "score": -5.0}]},
                     "neural_cleanse": {"correctness": "○", "targets": [{"target": 3, "precision": 0.1,
                                                                          "recall": 0.2, "f1": 0.13, "score": 30}]}},
        "notes": ["Neural Cleanse ran with the budget-reduced preset: NOT the faithful baseline"],
    }
    images = {("truth", 3): png, ("tabor", 3): png, ("neural_cleanse", 3): png}
    text = render_compare_html(compare, images)
    page = Page(text)
    assert "target-3" in page.ids and len(page.imgs) == 3
    assert "●" in text and "○" in text and "NOT the faithful" in text
    assert "tabor/report.html" in page.urls and "nc/report.html" in page.urls


def test_report_html_says_when_a_flagged_trigger_was_pruned(tmp_path):
    result = scan_result([10.0, 10.4, 1.0, 9.6, 10.1, 9.5, 9.9, 10.2])
    flagged = result.by_label(2)
    flagged.completed_mask = np.zeros((6, 6), np.float32)
    flagged.completed_mask[4:, 4:] = 1.0
    flagged.completed_pattern = np.full((6, 6, 3), 255.0, np.float32)
    flagged.parts["completion"] = {"l1": 4.0, "rounds": [], "accepted_rounds": 0, "stop": "natural features",
                                   "prune": {"l1_before": 18.0, "l1": 4.0, "attack_success": 0.99, "accepted": True,
                                             "steps": 150}}
    write_report(result, tmp_path, CTX)
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "pruned to L1 4.0" in text and "completed trigger" in text
    flagged.parts["completion"]["prune"]["accepted"] = False
    write_report(result, tmp_path / "again", CTX)
    assert "pruned to" not in (tmp_path / "again" / "report.html").read_text(encoding="utf-8")
