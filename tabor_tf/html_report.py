"""report.html: one self-contained page per scan (and one per comparison) that opens in any browser.

Everything is inline: images as base64 PNG ``data:`` URIs (scaled up in the browser with
``image-rendering: pixelated``), the anomaly plot as inline SVG, styles in one ``<style>`` block;
no scripts, no network. The page shows the verdict, the anomaly plot (score per label, the MAD
band ``median +- threshold * MAD``, flagged labels in red), the restored triggers of the flagged
labels large (mask, pattern, fusion), and every label as a grid.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Optional, Sequence

from .report import atomic_write_bytes, detection_limit_text, load_report
from .terminal import phase_text

HTML_NAME = "report.html"
FLAGGED_ROW = ' style="color:#c62828;font-weight:600"'
METHOD_TITLES = {"tabor": "TABOR", "neural_cleanse": "Neural Cleanse"}
SCORE_TITLES = {"a": "quality metric A", "l1": "mask L1 norm"}

CSS = """
:root { --bad: #c62828; --good: #2e7d32; --ink: #1f2328; --mute: #656d76; --line: #d0d7de; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       margin: 0 auto; padding: 24px; max-width: 1160px; background: #fff; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 10px; }
.sub { color: var(--mute); margin-bottom: 16px; word-break: break-all; }
.verdict { border-radius: 8px; padding: 14px 18px; color: #fff; font-size: 18px; font-weight: 600; }
.verdict.infected { background: var(--bad); } .verdict.clean { background: var(--good); }
.verdict.inconclusive { background: #9a6700; }
.verdict small { display: block; font-weight: 400; font-size: 14px; opacity: .92; }
table.kv { border-collapse: collapse; margin-top: 8px; }
table.kv td { padding: 3px 14px 3px 0; vertical-align: top; }
table.kv td:first-child { color: var(--mute); white-space: nowrap; }
table.grid { border-collapse: collapse; margin-top: 6px; }
table.grid th, table.grid td { border: 1px solid var(--line); padding: 4px 8px; text-align: right; }
table.grid th { background: #f6f8fa; } table.grid td.l { text-align: left; }
img.px { image-rendering: pixelated; image-rendering: crisp-edges; border: 1px solid var(--line);
         background: #000; display: block; }
.flagged-row { display: flex; flex-wrap: wrap; gap: 22px; }
.trigger { border: 2px solid var(--bad); border-radius: 8px; padding: 10px; }
.trigger .imgs { display: flex; gap: 8px; } .trigger figure { margin: 0; text-align: center; }
figcaption { color: var(--mute); font-size: 12px; margin-top: 2px; }
.cells { display: grid; grid-template-columns: repeat(auto-fill, minmax(112px, 1fr)); gap: 8px; }
.cell { border: 1px solid var(--line); border-radius: 6px; padding: 6px; font-size: 12px; }
.cell.flagged { border: 2px solid var(--bad); background: #fff5f5; }
.cell .imgs { display: flex; gap: 4px; } .cell b { font-size: 13px; }
.warn { background: #fff8c5; border: 1px solid #d4a72c; padding: 8px 12px; border-radius: 6px; margin: 8px 0; }
.note { color: var(--mute); font-size: 12px; }
svg text { font: 11px system-ui, sans-serif; fill: var(--ink); }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img_tag(png: Optional[bytes], size: int, alt: str, title: str = "") -> str:
    """An inline ``<img>`` scaled to ``size`` CSS pixels (nearest neighbour), or a placeholder."""
    if not png:
        return f'<div style="width:{size}px;height:{size}px" class="note">{esc(alt)}: missing</div>'
    return (
        f'<img class="px" src="{data_uri(png)}" width="{size}" height="{size}" '
        f'alt="{esc(alt)}" title="{esc(title or alt)}">'
    )


def fmt(value, digits: int = 3) -> str:
    """A number for people: ``digits`` decimals, scientific notation when tiny or huge."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(v):
        return str(v)
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 10.0 ** -digits):
        return f"{v:.{digits}g}"
    text = f"{v:.{digits}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text  # no "-0.000"


def pct(value) -> str:
    return "–" if value is None else f"{100.0 * float(value):.1f}%"


def duration(seconds) -> str:
    if seconds is None:
        return "–"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    m, s = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


# ----------------------------------------------------------------------------- anomaly plot


def anomaly_svg(
    points: Sequence[tuple],
    *,
    median: float,
    mad: float,
    threshold: float,
    score_name: str = "score",
    width: int = 1100,
    height: int = 300,
    floor: Optional[float] = None,
) -> str:
    """Inline SVG: score per label (``points`` = ``(label, score, flagged)``), MAD band, flagged in red.

    The band is ``median +- threshold * MAD`` (MAD already scaled by 1.4826); a label below the
    band is a low outlier, which is what the test flags. ``floor``: the lowest value the score can
    take (0 for a mask L1 norm): the axis and the band stop there.
    """
    pts = [(int(l), float(s), bool(f)) for l, s, f in points if s is not None and math.isfinite(float(s))]
    left, right, top, bottom = 64, 16, 18, 42
    pw, ph = width - left - right, height - top - bottom
    lo_band, hi_band = median - threshold * mad, median + threshold * mad
    lo_shown = lo_band if floor is None else max(lo_band, floor)
    values = [s for _, s, _ in pts] + [lo_shown, hi_band, median]
    ymin, ymax = min(values), max(values)
    pad = 0.08 * (ymax - ymin) if ymax > ymin else max(1.0, abs(ymax)) * 0.1
    ymin, ymax = ymin - pad, ymax + pad
    if floor is not None:
        ymin = max(ymin, floor)
    n = max(len(pts), 1)

    def x_of(i: int) -> float:
        return left + (i + 0.5) * pw / n

    def y_of(v: float) -> float:
        return top + (ymax - v) / (ymax - ymin) * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
        f'role="img" aria-label="anomaly plot of {esc(score_name)} per label" class="anomaly-plot">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafbfc" stroke="#d0d7de"/>',
    ]
    yb1, yb2 = y_of(hi_band), y_of(lo_shown)
    out.append(
        f'<rect x="{left}" y="{min(yb1, yb2):.1f}" width="{pw}" height="{abs(yb2 - yb1):.1f}" '
        f'fill="#2e7d32" fill-opacity="0.12"><title>MAD band: median ± {fmt(threshold)} × MAD</title></rect>'
    )
    ym = y_of(median)
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{ym:.1f}" y2="{ym:.1f}" stroke="#2e7d32" stroke-dasharray="5 4"/>')
    out.append(
        f'<text x="{left + 4}" y="{ym - 4:.1f}">median {fmt(median)}</text>'
        f'<text x="{left + pw - 4}" y="{yb2 + 12:.1f}" text-anchor="end">median − {fmt(threshold)}·MAD = {fmt(lo_band)}</text>'
    )
    for k in range(5):  # y ticks
        v = ymin + (ymax - ymin) * k / 4
        y = y_of(v)
        out.append(
            f'<line x1="{left - 4}" x2="{left}" y1="{y:.1f}" y2="{y:.1f}" stroke="#656d76"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{fmt(v, 2)}</text>'
        )
    step = max(1, int(math.ceil(n / 44)))
    for i, (label, score, flagged) in enumerate(pts):
        x, y = x_of(i), y_of(score)
        colour = "#c62828" if flagged else "#0969da"
        r = 6 if flagged else 4
        bar_w = min(10.0, max(1.0, pw / n * 0.35))
        out.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{ym:.1f}" y2="{y:.1f}" stroke="{colour}" '
            f'stroke-opacity="0.35" stroke-width="{bar_w:.1f}"/>'
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{colour}" class="{"flagged" if flagged else "label"}" '
            f'data-label="{label}"><title>label {label}: {esc(score_name)} {fmt(score)}'
            f'{" (flagged)" if flagged else ""}</title></circle>'
        )
        if flagged:
            out.append(f'<text x="{x + 8:.1f}" y="{y + 4:.1f}" fill="#c62828" font-weight="700">{label}</text>')
        if i % step == 0 or flagged:
            out.append(f'<text x="{x:.1f}" y="{top + ph + 14}" text-anchor="middle">{label}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle">label</text>')
    out.append(
        f'<text transform="translate(14 {top + ph / 2}) rotate(-90)" text-anchor="middle">{esc(score_name)}</text>'
    )
    out.append("</svg>")
    return "".join(out)


# ----------------------------------------------------------------------------- scan page


def _read(base: Path, rel: Optional[str]) -> Optional[bytes]:
    if not rel:
        return None
    try:
        return (base / rel).read_bytes()
    except OSError:
        return None


def _kv_table(rows: Sequence[tuple]) -> str:
    body = "".join(f"<tr><td>{esc(k)}</td><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
        f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


TABOR_PARTS = ("A", "sparsity", "smoothness", "attack", "crop", "explanation")


def _parts_text(parts: dict) -> str:
    """TABOR: A and its five parts; otherwise the numeric parts (at most 6)."""
    if not parts:
        return ""
    if "A" in parts:
        keys = [k for k in TABOR_PARTS if k in parts]
    else:
        keys = [k for k, v in parts.items() if isinstance(v, (int, float)) and not isinstance(v, bool)][:6]
    return ", ".join(f"{esc(k)} {fmt(parts[k])}" for k in keys)


def _probability_text(report: dict) -> Optional[str]:
    """"Trojan probability 0.97 (...)" from the report's ``trojan_probability`` block, or ``None``."""
    from .calibration import probability_text

    text = probability_text(report)
    return None if text is None else f"Trojan probability {text}"


def _label_anomaly_index(entry: dict) -> Optional[float]:
    """A label's anomaly index with the banner's sign (positive = below the median = suspicious)."""
    if entry.get("anomaly_index") is not None:
        return float(entry["anomaly_index"])
    return None if entry.get("mad_index") is None else -float(entry["mad_index"])  # reports before the field


def render_report_html(report: dict, base_dir) -> str:
    """The HTML page of one report; ``base_dir`` is the folder its label file paths are relative to."""
    base = Path(base_dir)
    method = report.get("method", "")
    mtitle = METHOD_TITLES.get(method, method)
    score_kind = report.get("mad", {}).get("score", "")
    score_name = SCORE_TITLES.get(score_kind, "score")
    model, data, prep = report.get("model", {}), report.get("data", {}), report.get("preprocess", {})
    flagged = [int(v) for v in report.get("flagged_labels", [])]
    verdict = report.get("verdict", "clean")
    mad = report.get("mad", {})
    labels = report.get("labels", [])
    by_label = {int(e["label"]): e for e in labels}

    parts = [f"<h1>tabor-tf scan: {esc(Path(str(model.get('path', '?'))).name)}</h1>"]
    parts.append(f'<div class="sub">{esc(mtitle)} · {esc(model.get("path", ""))}</div>')
    coverage = report.get("coverage") or {}
    if verdict == "inconclusive":
        head = "INCONCLUSIVE: no clean / infected verdict" + (
            f" (partial scan: {coverage.get('labels_scanned')} of {coverage.get('num_classes')} labels)"
            if coverage.get("partial") else "")
        if flagged:
            head += f"; candidate label{'s' if len(flagged) > 1 else ''} {', '.join(map(str, flagged))}"
    elif verdict == "infected":
        head = f"INFECTED: backdoor target label{'s' if len(flagged) > 1 else ''} {', '.join(map(str, flagged))}"
    else:
        head = "CLEAN: no label is an outlier"
    parts.append(
        f'<div class="verdict {esc(verdict)}" id="verdict">{esc(head)}'
        f"<small>anomaly index {fmt(report.get('anomaly_index'))} (threshold {fmt(mad.get('threshold'))}"
        + ("" if report.get("first_start_anomaly_index") is None
           else f"; first start {fmt(report['first_start_anomaly_index'])}, before the fresh starts")
        + ") · "
        f"{esc(mtitle)} · {esc(duration(report.get('seconds')))}</small></div>"
    )
    for reason in report.get("inconclusive_reasons") or ():
        parts.append(f'<div class="warn" id="inconclusive">⚠ {esc(reason)}</div>')
    if report.get("time_limited") and not report.get("inconclusive_reasons"):
        parts.append(f'<div class="warn" id="time-limited">⚠ time-limited: {esc(report["time_limited"])}; more labels'
                     " may be outliers</div>")
    blind = detection_limit_text(report)
    if blind:
        parts.append(f'<div class="note" id="detection-limit">Blind spot: {esc(blind)}</div>')
    prob_text = _probability_text(report)
    if prob_text:
        parts.append(f'<div class="note" id="trojan-probability">{esc(prob_text)}</div>')
    for w in prep.get("warnings", []) or []:
        parts.append(f'<div class="warn">⚠ {esc(w)}</div>')
    for n in report.get("notes", []) or []:
        parts.append(f'<div class="note">{esc(n)}</div>')

    parts.append("<h2>Anomaly plot</h2>")
    points = [(e["label"], e.get("score"), int(e["label"]) in flagged) for e in labels]
    parts.append(
        anomaly_svg(
            points,
            median=float(mad.get("median") or 0.0),
            mad=float(mad.get("mad") or 0.0),
            threshold=float(mad.get("threshold") or 2.0),
            score_name=score_name,
            floor=0.0 if score_kind == "l1" else None,
        )
    )
    parts.append(
        f'<div class="note">Each dot is one label\'s {esc(score_name)} (lower = more suspicious). The green band is '
        f"median ± {fmt(mad.get('threshold'))} × MAD (median {fmt(mad.get('median'))}, MAD {fmt(mad.get('mad'))}); "
        "labels below it are flagged.</div>"
    )

    if flagged:
        parts.append("<h2>Restored triggers of the flagged labels</h2><div class=\"flagged-row\">")
        for label in flagged:
            e = by_label.get(label)
            if e is None:
                continue
            files = e.get("files", {})
            figs = "".join(
                f"<figure>{img_tag(_read(base, files.get(k + '_png')), 192, f'label {label} {k}')}"
                f"<figcaption>{k}</figcaption></figure>"
                for k in ("mask", "pattern", "fusion")
            )
            completion = e.get("parts", {}).get("completion")
            if completion and files.get("completed_fusion_png"):
                figs += "".join(
                    f"<figure>{img_tag(_read(base, files.get('completed_' + k + '_png')), 192, f'label {label} completed {k}')}"
                    f"<figcaption>completed {k}</figcaption></figure>"
                    for k in ("mask", "fusion")
                )
                prune = completion.get("prune") or {}
                pruned = (f'pruned to L1 {fmt(prune.get("l1"), 1)} (the smallest working part of the restored '
                          "trigger), then " if prune.get("accepted") else "")
                figs += (f'<div class="note">completed trigger: {pruned}L1 {fmt(completion.get("l1"), 1)} after '
                         f'{completion.get("accepted_rounds")} peel round(s); stopped: {esc(str(completion.get("stop")))}'
                         "</div>")
            parts.append(
                f'<div class="trigger" id="flagged-{label}"><b>label {label}</b> · {esc(score_name)} '
                f"{fmt(e.get('score'))}{'' if score_kind == 'l1' else ' · L1 ' + fmt(e.get('l1'), 1)}"
                f" · attack success {pct(e.get('attack_success'))}"
                f'<div class="imgs">{figs}</div><div class="note">{_parts_text(e.get("parts", {}))}</div></div>'
            )
        parts.append("</div>")

    parts.append("<h2>All labels</h2><div class=\"cells\">")
    for e in labels:
        label = int(e["label"])
        files = e.get("files", {})
        cls = "cell flagged" if label in flagged else "cell"
        parts.append(
            f'<div class="{cls}" id="label-{label}"><b>{label}</b>{" ⚑" if label in flagged else ""}'
            f'<div class="imgs">{img_tag(_read(base, files.get("fusion_png")), 48, f"label {label} fusion")}'
            f'{img_tag(_read(base, files.get("mask_png")), 48, f"label {label} mask")}</div>'
            + (f"A {fmt(e.get('score'), 2)}<br>" if score_kind == "a" else "")
            + f"L1 {fmt(e.get('l1'), 1)}<br>ASR {pct(e.get('attack_success'))}</div>"
        )
    parts.append("</div>")

    parts.append("<h2>Per-label numbers</h2>")
    rows = []
    for e in labels:
        label = int(e["label"])
        rows.append(
            f"<tr{FLAGGED_ROW if label in flagged else ''}><td>{label}</td>"
            f"<td>{fmt(e.get('score'))}</td><td>{fmt(_label_anomaly_index(e), 2)}</td><td>{fmt(e.get('l1'), 1)}</td>"
            f"<td>{pct(e.get('attack_success'))}</td><td>{fmt(e.get('steps'))}</td>"
            f"<td class=\"l\">{esc(e.get('stop_reason', ''))}</td><td>{fmt(e.get('seconds'), 1)}</td>"
            f"<td class=\"l\">{_parts_text(e.get('parts', {}))}</td></tr>"
        )
    parts.append(
        '<table class="grid"><tr><th>label</th><th>score</th><th title="(median - score) / MAD, as in the banner: '
        'above the threshold = flagged">anomaly index</th><th>L1</th><th>attack success</th>'
        "<th>steps</th><th>stop</th><th>s</th><th>parts</th></tr>" + "".join(rows) + "</table>"
    )

    parts.append("<h2>How this scan was made</h2>")
    accs = prep.get("accuracies_by_mode") or {}
    acc_text = ", ".join(f"{esc(k)} {pct(v)}" for k, v in accs.items() if v is not None)
    settings = report.get("settings", {})
    parts.append(
        _kv_table(
            [
                ("model", esc(model.get("path", ""))),
                ("sha256", f"<code>{esc(model.get('sha256', ''))}</code>"),
                ("format", esc(model.get("format", ""))),
                ("input", f"{esc(model.get('input_shape'))}, {esc(model.get('num_classes'))} classes, "
                          f"{esc(model.get('output_kind', ''))}"),
                ("data", f"{esc(data.get('path', ''))} ({esc(data.get('format', ''))}, {esc(data.get('samples'))} "
                         f"images, {'labelled' if data.get('labelled') else 'unlabelled'})"),
                ("preprocessing", f"{esc(prep.get('mode', ''))} (clean accuracy {pct(prep.get('clean_accuracy'))})"
                                  + (f"; tried: {acc_text}" if acc_text else "")),
                ("method", f"{esc(mtitle)}, preset {esc(settings.get('preset', '–'))}"),
                ("seed", esc(report.get("seed"))),
                ("time", esc(duration(report.get("seconds")))
                 + (f" ({esc(phase_text(report))})" if phase_text(report) else "")),
                ("tool", f"tabor-tf {esc(report.get('tool_version', ''))}, schema {esc(report.get('schema_version'))}, "
                         f"{esc(report.get('created', ''))}"),
            ]
        )
    )
    settings_rows = "".join(f"<tr><td>{esc(k)}</td><td class=\"l\">{esc(v)}</td></tr>" for k, v in settings.items())
    parts.append(f'<details><summary>settings</summary><table class="kv">{settings_rows}</table></details>')
    return page(f"tabor-tf: {verdict} · {Path(str(model.get('path', ''))).name}", "\n".join(parts))


def write_report_html(out_dir, report: Optional[dict] = None) -> Path:
    """Write ``out_dir/report.html`` from ``report`` (default: ``out_dir/report.json``)."""
    out_dir = Path(out_dir)
    if report is None:
        report = load_report(out_dir)
    return atomic_write_bytes(out_dir / HTML_NAME, render_report_html(report, out_dir).encode("utf-8"))


# ----------------------------------------------------------------------------- compare page


def render_compare_html(compare: dict, images: dict) -> str:
    """The comparison page.

    ``compare``: the compare.json dictionary (``model``, ``methods``, ``truth``, ``measures``, ...).
    ``images``: ``{("truth", target): png, (method, target): png_of_restored_fusion,
    (method, target, "mask"): png_of_restored_mask, ("truth", target, "mask"): png}``.
    """
    methods = compare.get("methods", [])
    model = compare.get("model", {})
    reports = compare.get("reports", {})
    measures = compare.get("measures", {})
    truth = compare.get("truth") or {}
    targets = [int(t) for t in truth.get("targets", [])]
    parts = [f"<h1>TABOR vs Neural Cleanse: {esc(Path(str(model.get('path', '?'))).name)}</h1>"]
    parts.append(f'<div class="sub">{esc(model.get("path", ""))}</div>')
    for note in compare.get("notes", []) or []:
        parts.append(f'<div class="warn">{esc(note)}</div>')

    head = "".join(f"<th>{esc(METHOD_TITLES.get(m, m))}</th>" for m in methods)

    def row(name, fn):
        return f'<tr><td class="l">{esc(name)}</td>' + "".join(f"<td>{fn(m)}</td>" for m in methods) + "</tr>"

    rows = [
        row("verdict", lambda m: esc(reports.get(m, {}).get("verdict", "–"))),
        row("flagged labels", lambda m: esc(", ".join(map(str, reports.get(m, {}).get("flagged_labels", []))) or "none")),
        row("anomaly index", lambda m: fmt(reports.get(m, {}).get("anomaly_index"))),
        row("time", lambda m: esc(duration(reports.get(m, {}).get("seconds")))),
        row("preset", lambda m: esc(reports.get(m, {}).get("settings", {}).get("preset", "–"))),
    ]
    if truth:
        rows.append(row("correctness", lambda m: esc(measures.get(m, {}).get("correctness", "–"))))
        for t in targets:
            rows.append(row(f"score of true target {t}", lambda m, t=t: fmt(_target_entry(measures, m, t).get("score"))))
            rows.append(row(f"precision / recall / F1 (target {t})", lambda m, t=t: _prf(_target_entry(measures, m, t))))
    parts.append('<h2>Side by side</h2><table class="grid"><tr><th></th>' + head + "</tr>" + "".join(rows) + "</table>")

    shown = [int(t) for t in compare.get("shown_labels", targets)]
    if shown:
        parts.append("<h2>True trigger and restored triggers</h2>" if targets else
                     "<h2>Restored triggers of the flagged (or most suspicious) labels</h2>")
        for t in shown:
            figs = []
            if ("truth", t) in images:
                figs.append(f"<figure>{img_tag(images.get(('truth', t)), 160, f'true trigger {t}')}"
                            f"<figcaption>true trigger (target {t})</figcaption></figure>")
            for m in methods:
                e = _target_entry(measures, m, t)
                figs.append(
                    f"<figure>{img_tag(images.get((m, t)), 160, f'{m} restored trigger {t}')}"
                    f"<figcaption>{esc(METHOD_TITLES.get(m, m))}"
                    f"{': F1 ' + fmt(e.get('f1'), 2) if e else ''}</figcaption></figure>"
                )
                if images.get((m, t, "mask")):
                    figs.append(
                        f"<figure>{img_tag(images.get((m, t, 'mask')), 160, f'{m} restored mask {t}')}"
                        f"<figcaption>{esc(METHOD_TITLES.get(m, m))} mask</figcaption></figure>"
                    )
            parts.append(f'<div class="trigger" id="target-{t}"><b>label {t}</b>'
                         f'<div class="imgs">{"".join(figs)}</div></div>')
    links = "".join(
        f'<li><a href="{esc(compare.get("report_dirs", {}).get(m, m))}/report.html">'
        f"{esc(METHOD_TITLES.get(m, m))} report</a></li>"
        for m in methods
    )
    parts.append(f"<h2>Full reports</h2><ul>{links}</ul>")
    return page(f"tabor-tf compare · {Path(str(model.get('path', ''))).name}", "\n".join(parts))


def _target_entry(measures: dict, method: str, target: int) -> dict:
    for e in measures.get(method, {}).get("targets", []):
        if int(e.get("target", -1)) == int(target):
            return e
    return {}


def _prf(e: dict) -> str:
    if not e:
        return "–"
    return f"{fmt(e.get('precision'), 2)} / {fmt(e.get('recall'), 2)} / {fmt(e.get('f1'), 2)}"
