"""What a person sees on the terminal: a progress bar per scan and a summary block at the end.

``ProgressBar`` is a ``progress`` callback (``tabor_tf.progress.ProgressEvent``). On a terminal
it redraws one line in place (labels done, current step, elapsed, estimate left); when the
stream is not a terminal (CI logs, pipes) it prints a plain line now and then instead
(when a label finishes, at most every ``plain_every`` seconds, and at the end); ``quiet``
prints nothing. Everything goes to ``stderr`` by default so ``--json`` output stays clean.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Optional, TextIO

from .progress import ProgressEvent

METHOD_NAMES = {"tabor": "TABOR", "neural_cleanse": "Neural Cleanse", "nc": "Neural Cleanse"}


def clock(seconds: Optional[float]) -> str:
    """``seconds`` as ``m:ss`` or ``h:mm:ss``; ``--:--`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds > 360000:
        return "--:--"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def human_duration(seconds: float) -> str:
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def use_colour(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)()) and "NO_COLOR" not in os.environ


def paint(text: str, code: str, stream: TextIO) -> str:
    return f"\033[{code}m{text}\033[0m" if use_colour(stream) else text


def progress_fraction(event: ProgressEvent, label_finished: bool = False) -> float:
    """Share of the scan done, 0..1: finished labels plus the step share of the label(s) in work.

    An event with ``label`` set means one label is being optimised (Neural Cleanse); with
    ``label=None`` all remaining labels are optimised together (TABOR's batched engine).
    ``label_finished``: the event reports that ``label`` just finished (it is already counted in
    ``labels_done``).
    """
    total = max(int(event.labels_total), 1)
    done = min(max(int(event.labels_done), 0), total)
    if label_finished:
        return done / total
    step_share = 0.0
    if event.max_steps and event.max_steps > 0:
        step_share = min(max(float(event.step) / float(event.max_steps), 0.0), 1.0)
    in_work = 1 if event.label is not None else total - done
    return min(1.0, (done + min(in_work, total - done) * step_share) / total)


class ProgressBar:
    """Progress callback drawing one bar for one scan (``title`` names it: method and model)."""

    def __init__(
        self,
        title: str = "",
        *,
        stream: Optional[TextIO] = None,
        quiet: bool = False,
        width: int = 28,
        plain_every: float = 30.0,
        clock_fn=time.monotonic,
        deadline: Optional[float] = None,
    ):
        self.title = title
        self.deadline = deadline  # --time-budget (``clock_fn`` seconds): the estimate never runs past it
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.width = width
        self.plain_every = plain_every
        self.clock = clock_fn
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = self.clock()
        self.last_event: Optional[ProgressEvent] = None
        self._last_plain = -1e18
        self._last_plain_done = -1
        self._last_draw = -1e18
        self._closed = False
        self._prev_done = 0
        self._fraction = 0.0  # shown share, never decreasing (TABOR scores labels after optimising them)

    # -- the callback
    def __call__(self, event: ProgressEvent) -> None:
        self.last_event = event
        finished = event.label is not None and event.labels_done > self._prev_done
        self._prev_done = max(self._prev_done, int(event.labels_done))
        self._fraction = max(self._fraction, progress_fraction(event, finished))
        if self.quiet or self._closed:
            return
        now = self.clock()
        if self.tty:
            if now - self._last_draw >= 0.1 or event.labels_done >= event.labels_total:
                self._last_draw = now
                width = shutil.get_terminal_size((100, 20)).columns - 1
                self.stream.write("\r" + self.line(event, now)[:max(width, 20)] + "\033[K")
                self.stream.flush()
        else:
            finished_label = event.labels_done != self._last_plain_done
            if (finished_label and now - self._last_plain >= min(self.plain_every, 5.0)) or (
                now - self._last_plain >= self.plain_every
            ) or event.labels_done >= event.labels_total > self._last_plain_done:
                self._last_plain = now
                self._last_plain_done = event.labels_done
                self.stream.write(self.line(event, now) + "\n")
                self.stream.flush()

    def estimate_left(self, event: ProgressEvent, now: Optional[float] = None) -> Optional[float]:
        """Seconds left, from the elapsed time and the share done (None until 1% is done), at most
        the time to the deadline when there is one."""
        now = self.clock() if now is None else now
        frac = self._fraction if event is self.last_event else progress_fraction(event)
        if frac < 0.01:
            return None if self.deadline is None else max(self.deadline - now, 0.0)
        left = (now - self.start) * (1.0 - frac) / frac
        return left if self.deadline is None else min(left, max(self.deadline - now, 0.0))

    def line(self, event: ProgressEvent, now: Optional[float] = None) -> str:
        now = self.clock() if now is None else now
        frac = self._fraction if event is self.last_event else progress_fraction(event)
        filled = int(round(frac * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        name = METHOD_NAMES.get(event.method, event.method)
        where = f"label {event.label} " if event.label is not None else ""
        step = f"{where}step {event.step}/{event.max_steps}" if event.max_steps else where.strip()
        left = self.estimate_left(event, now)
        done = max(int(event.labels_done), self._prev_done) if event is self.last_event else event.labels_done
        text = (
            f"{self.title or name} [{bar}] {done}/{event.labels_total} labels  {step}  "
            f"{clock(now - self.start)} elapsed  ~{clock(left)} left"
        )
        if event.message:
            text += f"  {event.message}"
        return text

    def close(self) -> None:
        """End the bar's line (terminal) so the next output starts on a fresh line."""
        if self._closed:
            return
        self._closed = True
        if self.quiet:
            return
        if self.tty and self.last_event is not None:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def say(text: str, *, stream: Optional[TextIO] = None, quiet: bool = False) -> None:
    """One informational line (suppressed by ``quiet``)."""
    if not quiet:
        print(text, file=stream if stream is not None else sys.stderr, flush=True)


def warn(text: str, *, stream: Optional[TextIO] = None) -> None:
    """A warning line; never suppressed (low clean accuracy must be seen even with ``--quiet``)."""
    stream = stream if stream is not None else sys.stderr
    print(paint(f"WARNING: {text}", "1;33", stream), file=stream, flush=True)


def _index_text(value) -> str:
    return "infinite (MAD = 0)" if value is None else f"{float(value):.2f}"


def verdict_line(report: dict) -> str:
    """``verdict  INFECTED  (TABOR)``: the one line a gate's log must always show."""
    method = METHOD_NAMES.get(report.get("method", ""), report.get("method", ""))
    verdict = str(report.get("verdict", "?"))
    text = f"verdict          {verdict.upper()}  ({method})"
    coverage = report.get("coverage") or {}
    if coverage.get("partial"):
        text += f"  PARTIAL: {coverage.get('labels_scanned')} of {coverage.get('num_classes')} labels scanned"
    if report.get("time_limited"):
        text += "  TIME-LIMITED"
    return text


def summary_lines(report: dict, report_path: Optional[str] = None, html_path: Optional[str] = None) -> list:
    """The summary block of one scan report as plain lines (verdict first)."""
    flagged = report.get("flagged_labels", [])
    prep = report.get("preprocess", {})
    acc = prep.get("clean_accuracy")
    mad = report.get("mad", {})
    inconclusive = report.get("verdict") == "inconclusive"
    from .report import detection_limit_text  # here, not at the top: report.py loads OpenCV

    blind = detection_limit_text(report)
    lines = [verdict_line(report)]
    for reason in report.get("inconclusive_reasons") or ():
        lines.append(f"why              {reason}")
    if report.get("time_limited") and not report.get("inconclusive_reasons"):
        lines.append(f"time-limited     {report['time_limited']}; more labels may be outliers (rerun to resume)")
    lines += [
        f"{'candidate labels' if inconclusive else 'flagged labels  '} {', '.join(map(str, flagged)) if flagged else 'none'}",
        f"anomaly index    {_index_text(report.get('anomaly_index'))}  (threshold {float(mad.get('threshold') or 2.0):g})"
        + ("" if report.get("first_start_anomaly_index") is None
           else f"; first start {_index_text(report['first_start_anomaly_index'])}"),
        *([f"blind spot       {blind}"] if blind else []),
        *[f"fresh starts     {n}" for n in report.get("notes") or () if "fresh starts" in n],
        *_completion_lines(report),
        f"clean accuracy   {'unknown' if acc is None else f'{100 * float(acc):.1f}%'}"
        f"  (preprocessing {prep.get('mode', '?')})",
        f"time             {human_duration(float(report.get('seconds', 0.0)))}"
        + (f"  ({phase_text(report)})" if phase_text(report) else ""),
    ]
    if report_path:
        lines.append(f"report           {report_path}")
    if html_path:
        lines.append(f"html report      {html_path}")
    return lines


def phase_text(report: dict) -> str:
    """Where the time went (``settings.phase_seconds``): the phases that took a second or more, e.g.
    ``"search 50.1 s, scoring 12.0 s"``; empty for reports without them."""
    phases = (report.get("settings") or {}).get("phase_seconds") or {}
    return ", ".join(f"{name} {human_duration(float(v))}" for name, v in phases.items() if float(v) >= 1.0)


def _completion_lines(report: dict) -> list:
    """One line per flagged label whose trigger was completed (``tabor_tf.completion``)."""
    lines = []
    for e in report.get("labels") or ():
        c = (e.get("parts") or {}).get("completion")
        if c and e.get("flagged"):
            prune = c.get("prune") or {}
            pruned = f"pruned to {float(prune['l1']):.1f}, " if prune.get("accepted") else ""
            lines.append(f"whole trigger    label {e['label']}: mask L1 {float(e.get('l1', 0.0)):.1f} -> {pruned}"
                         f"{float(c.get('l1', 0.0)):.1f} after {c.get('accepted_rounds', 0)} peel round(s)"
                         f" (label_{int(e['label']):03d}_completed_*)")
    return lines


VERDICT_COLOURS = {"infected": "1;31", "clean": "1;32", "inconclusive": "1;33"}


def print_summary(report: dict, report_path: Optional[str] = None, *, stream: Optional[TextIO] = None,
                  html_path: Optional[str] = None) -> None:
    stream = stream if stream is not None else sys.stdout
    lines = summary_lines(report, report_path, html_path)
    lines[0] = paint(lines[0], VERDICT_COLOURS.get(report.get("verdict"), "1;33"), stream)
    print("\n".join(lines), file=stream, flush=True)


def print_verdict_line(report: dict, *, stream: Optional[TextIO] = None) -> None:
    """Only the verdict line (``--quiet``), coloured like the summary's."""
    stream = stream if stream is not None else sys.stdout
    print(paint(verdict_line(report), VERDICT_COLOURS.get(report.get("verdict"), "1;33"), stream), file=stream,
          flush=True)
