"""The wheel is self-sufficient and its metadata honest (issue 13, item 8), and written files follow
the umask.

The wheel is built offline from a copy of the source (``pip wheel --no-deps --no-build-isolation
--no-index``: setuptools + wheel come with the ``test`` extra), so the checkout's build/ and
egg-info are never touched. Building takes a few seconds; no TensorFlow is imported here except in
the one subprocess that imports the unpacked wheel."""

import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("tabor_tf", "neural_cleanse_baseline")
BUILD_FILES = ("setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE")
DEMO_SOURCE = REPO / "tabor_tf" / "assets" / "demo"
DEMO_IN_WHEEL = "tabor_tf/assets/demo/"
DEMO_VICTIMS = {"clean", "icon-tl", "square-br"}
# distributions that all install the one import package ``tensorflow`` (two of them clobber each other)
TF_DISTRIBUTIONS = {canonicalize_name(n) for n in (
    "tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel", "tensorflow-macos",
    "tensorflow-aarch64", "tensorflow-cpu-aws", "intel-tensorflow", "tf-nightly", "tf-nightly-cpu",
    "tf-nightly-gpu")}
MAX_WHEEL_BYTES = 4_000_000  # code + assets + three ~0.45 MB demo victims: ~1.4 MB today


def _source_copy(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in BUILD_FILES:
        if (REPO / name).is_file():
            shutil.copy2(REPO / name, dest / name)
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.partial", "*.tmp", ".*")
    for package in PACKAGES:
        shutil.copytree(REPO / package, dest / package, ignore=junk)
    return dest


def _fake_installed_tensorflow(site: Path) -> Path:
    """A ``tensorflow`` distribution as importlib.metadata sees it (metadata only, no code)."""
    info = site / "tensorflow-2.21.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tensorflow\nVersion: 2.21.0\n")
    return site


def _build_wheel(src: Path, out: Path, **env_changes) -> Path:
    env = {k: v for k, v in os.environ.items() if k not in ("TABOR_TF_TENSORFLOW", "PYTHONPATH")}
    env.update({k: str(v) for k, v in env_changes.items()})
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
           "-w", str(out), str(src)]
    proc = subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"wheel build failed:\n{proc.stdout}\n{proc.stderr}"
    wheels = sorted(out.glob("tabor_tf-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(zf.read(name).decode("utf-8"))


def _requires(wheel: Path) -> list:
    return sorted(_metadata(wheel).get_all("Requires-Dist") or [])


@pytest.fixture(scope="module")
def wheels(tmp_path_factory):
    """The wheel built three ways: plain, with ``TABOR_TF_TENSORFLOW=gpu``, and on a machine where a
    ``tensorflow`` distribution is installed (the old setup.py looked at all of these)."""
    root = tmp_path_factory.mktemp("wheels")
    fake_site = _fake_installed_tensorflow(root / "fake-site")
    builds = {"plain": {}, "env-gpu": {"TABOR_TF_TENSORFLOW": "gpu"}, "tf-installed": {"PYTHONPATH": fake_site}}
    return {key: _build_wheel(_source_copy(root / f"src-{key}"), root / f"out-{key}", **changes)
            for key, changes in builds.items()}


def test_wheel_metadata_does_not_depend_on_the_building_machine(wheels):
    plain = _requires(wheels["plain"])
    assert any(canonicalize_name(Requirement(r).name) in TF_DISTRIBUTIONS for r in plain)
    for key in ("env-gpu", "tf-installed"):
        assert _requires(wheels[key]) == plain, key


def _tf_distributions(requires: list, extras: set) -> set:
    """The TF distributions ``pip install "tabor-tf[extras]"`` asks for."""
    found = set()
    for line in requires:
        req = Requirement(line)
        active = req.marker is None or any(req.marker.evaluate({"extra": e}) for e in (extras or {""}))
        if active and canonicalize_name(req.name) in TF_DISTRIBUTIONS:
            found.add(canonicalize_name(req.name))
    return found


def test_extras_never_install_a_second_tensorflow(wheels):
    meta = _metadata(wheels["plain"])
    requires = meta.get_all("Requires-Dist") or []
    extras = set(meta.get_all("Provides-Extra") or [])
    assert "gpu" in extras
    base = _tf_distributions(requires, set())
    assert len(base) == 1, base  # a plain install runs: exactly one TF
    for chosen in [{e} for e in sorted(extras)] + [extras]:
        assert _tf_distributions(requires, chosen) == base, chosen  # extras only add to that same TF
    gpu = [Requirement(r) for r in requires if Requirement(r).marker and Requirement(r).marker.evaluate({"extra": "gpu"})
           and not Requirement(r).marker.evaluate({"extra": ""})]
    assert any(canonicalize_name(r.name) in base and "and-cuda" in r.extras for r in gpu), gpu  # CUDA libs


def test_wheel_ships_the_demo_victims_and_finds_them_without_a_checkout(wheels, tmp_path):
    wheel = wheels["plain"]
    assert wheel.stat().st_size < MAX_WHEEL_BYTES, wheel.stat().st_size
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        cards = {n for n in names if n.startswith(DEMO_IN_WHEEL) and n.endswith("/card.json")}
        assert {n[len(DEMO_IN_WHEEL):].split("/")[0] for n in cards} >= DEMO_VICTIMS
        for card_name in cards:  # every file a card names (model, true masks / patterns) is in the wheel
            folder = card_name.rsplit("/", 1)[0]
            card = json.loads(zf.read(card_name))
            named = [card["model_file"]] + [b[k] for b in card.get("backdoors", [])
                                            for k in ("mask_file", "pattern_file", "mask_png", "pattern_png")]
            assert all(f"{folder}/{f}" in names for f in named), (card_name, named)
        shipped = {f"{DEMO_IN_WHEEL}{p.relative_to(DEMO_SOURCE).as_posix()}" for p in DEMO_SOURCE.rglob("*")
                   if p.is_file() and not any(part.endswith(".partial") for part in p.parts)}
        assert shipped <= names, sorted(shipped - names)  # everything of the source demo folder
        zf.extractall(tmp_path / "site")

    site, work = tmp_path / "site", tmp_path / "work"
    work.mkdir()
    probe = (
        "import json, tabor_tf\n"
        "from tabor_tf.compare import find_demo_dir\n"
        "from tabor_tf.zoo import load_card\n"
        "demo = find_demo_dir()\n"
        "cards = sorted(demo.glob('*/card.json'))\n"
        "masks = sum(len(load_card(str(c)).masks) for c in cards)\n"
        "print(json.dumps({'package': tabor_tf.__file__, 'demo': str(demo),\n"
        "                  'victims': [c.parent.name for c in cards], 'masks': masks}))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TABOR_TF_DEMO_DIR", "PYTHONPATH")}
    env.update(PYTHONPATH=str(site), TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=work, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(found["package"]).resolve().is_relative_to(site.resolve())  # the wheel's code, not the checkout
    assert Path(found["demo"]).resolve() == (site / "tabor_tf" / "assets" / "demo").resolve()
    assert set(found["victims"]) >= DEMO_VICTIMS and found["masks"] >= 2


# --- file modes ------------------------------------------------------------------------------


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask_like_open(tmp_path, umask, expected):
    from tabor_tf.report import atomic_write_bytes, atomic_write_json

    out = tmp_path / "out"
    old = os.umask(umask)
    try:
        html = atomic_write_bytes(out / "report.html", b"<html></html>")
        report = atomic_write_json(out / "report.json", {"verdict": "clean"})
        atomic_write_bytes(html, b"<html>again</html>")  # replacing a file gives the new one the same mode
        with open(tmp_path / "plain.txt", "w") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "plain.txt") == expected
    assert _mode(html) == expected and _mode(report) == expected
    assert html.read_bytes() == b"<html>again</html>"
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]  # no temporary left


def test_a_written_report_is_readable_by_the_group_and_others_under_umask_022(tmp_path):
    import numpy as np

    from tabor_tf.outliers import mad_test
    from tabor_tf.report import ReportContext, write_report
    from tabor_tf.results import LabelResult, ScanResult

    rng = np.random.default_rng(0)
    scores = [10.0, 10.5, 9.5, 1.0, 10.2, 9.8]
    labels = [LabelResult(label=k, mask=rng.uniform(0, 1, (8, 8)).astype(np.float32),
                          pattern=rng.uniform(0, 255, (8, 8, 3)).astype(np.float32), score=s, attack_success=0.99,
                          l1=1.0, steps=10, stop_reason="converged", seconds=0.1, parts={"A": s})
              for k, s in enumerate(scores)]
    scan = ScanResult(method="tabor", labels=labels, mad=mad_test(scores, list(range(6))), seconds=1.0,
                      settings={"preset": "fast"}, clean_accuracy=0.9)
    context = ReportContext(model={"path": "/m/model.h5", "sha256": "ab" * 32, "format": "keras3-h5",
                                   "input_shape": [8, 8, 3], "num_classes": 6, "output_kind": "logits"},
                            data={"path": "/d.npz", "format": "npz", "samples": 10, "labelled": True},
                            preprocess={"mode": "raw", "clean_accuracy": 0.9, "accuracies_by_mode": {"raw": 0.9},
                                        "warnings": []}, seed=0)
    old = os.umask(0o022)
    try:
        write_report(scan, tmp_path / "scan", context, html=True)
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "scan").rglob("*") if p.is_file()]
    assert any(p.name == "report.json" for p in files) and any(p.name == "report.html" for p in files)
    assert len(files) > 2 and {p.name: _mode(p) for p in files} == {p.name: 0o644 for p in files}
