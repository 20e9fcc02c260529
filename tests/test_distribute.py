"""Strategies, mixed precision and the memory budget (tabor_tf.distribute) and their scan wiring.

The two-replica runs need the CPU split into two logical devices before TensorFlow starts, so
they run in a subprocess; everything else runs in this process on the default strategy.
"""

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from tabor_tf import distribute
from tabor_tf.errors import TaborError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- names and selection


def test_unknown_names_are_one_line_errors():
    with pytest.raises(TaborError, match="unknown strategy 'tpu'.*auto, default, one-device, mirrored, multiworker"):
        distribute.make_strategy("tpu")
    with pytest.raises(TaborError, match="unknown precision 'bfloat8'"):
        distribute.resolve_precision("bfloat8")
    with pytest.raises(TaborError, match="memory-budget"):
        distribute.make_execution("default", "float32", memory_budget_gib=-1)


def test_auto_picks_mirrored_only_with_several_gpus(monkeypatch):
    for gpus, strategy, precision in ((0, "default", "float32"), (1, "default", "mixed_float16"),
                                      (2, "mirrored", "mixed_float16"), (8, "mirrored", "mixed_float16")):
        monkeypatch.setattr(distribute, "gpu_count", lambda n=gpus: n)
        assert distribute.resolve_strategy_name("auto") == strategy
        assert distribute.resolve_precision("auto") == precision
    monkeypatch.undo()
    real = distribute.make_execution("auto", "float32")
    assert real.strategy_name == ("mirrored" if distribute.gpu_count() > 1 else "default")
    assert real.to_dict()["strategy_requested"] == "auto" and real.precision == "float32"


def test_default_and_one_device_strategies():
    assert distribute.make_strategy("default") is tf.distribute.get_strategy()
    one = distribute.make_strategy("one-device")
    assert isinstance(one, tf.distribute.OneDeviceStrategy) and one.num_replicas_in_sync == 1
    ex = distribute.make_execution("one-device", "float32", memory_budget_gib=3)
    assert ex.replicas == 1 and len(ex.devices) == 1 and ex.budget_gib == 3.0
    assert distribute.current().strategy_name == "default"  # nothing set
    with distribute.using(ex):
        assert distribute.current() is ex
    assert distribute.current() is not ex


@pytest.mark.parametrize("value, message", [
    (None, "needs the TF_CONFIG environment variable"),
    ("{not json", "not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', "no 'cluster'"),
    ('{"cluster": {"worker": ["host1"]}, "task": {"type": "worker", "index": 0}}', "host:port"),
    ('{"cluster": {"worker": ["h1:1", "h2:2"]}}', "no 'task'"),
    ('{"cluster": {"worker": ["h1:1", "h2:2"]}, "task": {"type": "worker", "index": 2}}', "index 2 out of range"),
    ('{"cluster": {"worker": ["h1:1"]}, "task": {"type": "ps", "index": 0}}', "'ps' is not a job"),
])
def test_multiworker_needs_a_valid_tf_config(monkeypatch, value, message):
    if value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", value)
    with pytest.raises(TaborError, match=message):
        distribute.make_strategy("multiworker")


def test_cli_rejects_unknown_strategies_and_checks_tf_config_before_loading(monkeypatch, capsys):
    from tabor_tf.cli import main

    assert main(["scan", "model.h5", "--data", "synthetic", "--strategy", "tpu"]) == 2
    assert "invalid choice: 'tpu'" in capsys.readouterr().err
    monkeypatch.delenv("TF_CONFIG", raising=False)
    for argv in (["scan", "missing.h5", "--data", "synthetic"], ["audit", "missing-dir"],
                 ["compare", "missing.h5", "--data", "synthetic"]):
        assert main(argv + ["--strategy", "multiworker"]) == 2
        err = capsys.readouterr().err
        assert "TF_CONFIG" in err and "missing" not in err  # the strategy is resolved before any loading


# ----------------------------------------------------------------------------- memory budget


def _model_224():
    import keras

    return keras.Sequential([
        keras.Input((224, 224, 3)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(4),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ])


def test_memory_budget_sets_the_label_chunks_of_a_224px_scan():
    from tabor_tf.tabor import preset
    from tabor_tf.tabor.engine import TriggerEngine, plan_chunks

    victim = SimpleNamespace(model=_model_224())
    # input + conv + pool + conv + pooled + dense outputs of one image
    elems = 224 * 224 * 3 + 224 * 224 * 8 + 56 * 56 * 8 + 56 * 56 * 16 + 16 + 10
    assert distribute.activation_elements(victim.model) == elems
    per_image = distribute.bytes_per_image(victim)
    assert per_image == elems * 4 * distribute.ACTIVATION_COPIES
    assert distribute.bytes_per_image(victim, "mixed_float16") == per_image // 2
    one_gib = distribute.Execution(memory_budget_gib=1.0)
    fit = distribute.images_per_step(victim, one_gib)
    assert fit == 2**30 // per_image
    assert distribute.images_per_step(victim, distribute.Execution(memory_budget_gib=1.0, replicas=2)) == 2 * fit
    # the default budget; a model whose activations are unknown keeps the preset's cap
    assert distribute.images_per_step(victim, distribute.Execution()) == int(
        distribute.DEFAULT_MEMORY_BUDGET_GIB * 2**30 // per_image)
    assert distribute.images_per_step(SimpleNamespace(model=None), one_gib) is None

    config = preset("imagenet", max_images_per_step=fit)
    x = np.zeros((24, 224, 224, 3), np.float32)
    engine = TriggerEngine(victim.model, x, np.zeros(24), list(range(10)), config, preprocess="unit")
    per_label = config.batch_size + config.blocking_batch_size + 1
    assert engine.labels_per_chunk == fit // per_label
    chunks = plan_chunks(np.arange(10), engine.labels_per_chunk, config.label_bucket)
    assert sum(n for _, n in chunks) == 10
    assert all(len(p) * per_label * per_image <= 2**30 for p, _ in chunks)


def test_run_scan_chunks_to_the_budget_and_records_the_execution(tiny_infected_victim):
    from tabor_tf.scanning import prepare, run_scan

    prepared = prepare(tiny_infected_victim.model_path, tiny_infected_victim.data_path, preprocess="unit",
                       max_samples=40)
    per_image = distribute.bytes_per_image(prepared.victim)
    budget = 30 * per_image / 2**30  # room for 30 images: one label (16 + 4 + 1) per chunk
    ex = distribute.make_execution("default", "float32", memory_budget_gib=budget)
    tiny = dict(steps=2, round_steps=1, min_rounds=1, eval_images=16)
    res, report = run_scan(method="tabor", preset="fast", overrides=tiny, prepared=prepared, execution=ex,
                           labels=[0, 1, 7], checkpoint=False)
    s = report["settings"]
    assert s["max_images_per_step"] == 30 and res.settings["image_steps"] == 2 * 3 * 21
    assert (s["strategy"], s["replicas"], s["precision"]) == ("default", 1, "float32")
    assert s["memory_budget_gib"] == pytest.approx(budget)
    # an explicit --set max_images_per_step wins over the budget
    _, report = run_scan(method="tabor", preset="fast", overrides=dict(tiny, max_images_per_step=100),
                         prepared=prepared, execution=ex, labels=[0, 1, 7], checkpoint=False)
    assert report["settings"]["max_images_per_step"] == 100


# ----------------------------------------------------------------------------- mixed precision


def test_float16_twin_keeps_weights_outputs_and_input_gradients(tiny_infected_victim):
    from tabor_tf.loading import load_victim

    victim = load_victim(tiny_infected_victim.model_path)
    twin = distribute.victim_for(victim, distribute.Execution(precision="mixed_float16"))
    assert twin is not victim and twin.model is not victim.model
    dtypes = {layer.compute_dtype for layer in twin.model.layers if layer.weights}
    assert dtypes == {"float16"} and all(w.dtype == "float32" for w in twin.model.weights)
    assert twin.sha256 == victim.sha256 + "+mixed_float16"
    assert {layer.compute_dtype for layer in victim.model.layers if layer.weights} == {"float32"}
    assert distribute.victim_for(victim, distribute.Execution()) is victim  # float32, one replica
    x = tf.constant(np.random.default_rng(0).uniform(0, 1, (8, 32, 32, 3)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        full, half = victim.logits(x), twin.logits(x)
        loss_full = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.fill([8], 7), full))
        loss_half = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(tf.fill([8], 7), half))
    assert half.dtype == tf.float32
    np.testing.assert_allclose(half.numpy(), full.numpy(), atol=0.05 * float(tf.reduce_max(tf.abs(full))))
    g_full, g_half = tape.gradient(loss_full, x).numpy().ravel(), tape.gradient(loss_half, x).numpy().ravel()
    assert np.isfinite(g_half).all()
    cosine = g_full @ g_half / (np.linalg.norm(g_full) * np.linalg.norm(g_half))
    assert cosine > 0.99 and 0.9 < np.linalg.norm(g_half) / np.linalg.norm(g_full) < 1.1  # loss scale undone


def test_mixed_precision_scan_finds_the_same_target(tiny_infected_victim):
    """CPU float16 is slow: few images, few labels, a short search; the float32 run is the reference."""
    from tabor_tf.scanning import prepare, run_scan

    prepared = prepare(tiny_infected_victim.model_path, tiny_infected_victim.data_path, preprocess="unit",
                       max_samples=80)
    short = dict(steps=40, round_steps=10, min_rounds=2, eval_images=48)
    results = {}
    for precision in ("float32", "mixed_float16"):
        results[precision], _ = run_scan(method="tabor", preset="fast", overrides=short, prepared=prepared,
                                         labels=[0, 3, 5, 7, 9], checkpoint=False,
                                         execution=distribute.make_execution("default", precision))
    full, half = results["float32"], results["mixed_float16"]
    assert half.settings["precision"] == "mixed_float16"
    assert full.flagged_labels == [7] and half.flagged_labels == [7]
    assert half.by_label(7).score == min(r.score for r in half.labels)
    assert half.by_label(7).attack_success > 0.9


def test_mixed_precision_needs_a_keras_model_without_stored_code():
    import keras

    victim = SimpleNamespace(model=object(), format="savedmodel")
    with pytest.raises(TaborError, match="needs a Keras model"):
        distribute.victim_for(victim, distribute.Execution(precision="mixed_float16"))
    ran = []
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Lambda(lambda t: ran.append(1) or t * 2)(inp)))
    ran.clear()
    victim = SimpleNamespace(model=model, format="keras", path="lambda.keras")
    with pytest.raises(TaborError, match="cannot run this model in mixed_float16.*Lambda"):
        distribute.victim_for(victim, distribute.Execution(precision="mixed_float16"))
    # several replicas in float32: such a model runs as loaded (not cloned)
    assert distribute.victim_for(victim, distribute.Execution(replicas=2)) is victim
    assert ran == []  # the stored function never ran


# ----------------------------------------------------------------------------- two replicas


TWO_REPLICAS = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    from tabor_tf.distribute import make_execution, split_cpu
    assert len(split_cpu(2)) == 2  # before TensorFlow initialises its devices
    import numpy as np
    from tabor_tf.scanning import prepare, run_scan
    prepared = prepare(sys.argv[1], sys.argv[2], preprocess="unit", max_samples=100)
    settings = {"tabor": ("fast", dict(steps=20, round_steps=10, min_rounds=1, eval_images=48)),
                "nc": ("gtsrb", dict(steps=10, mini_batch=2, batch_size=16, patience=2, early_stop_patience=3))}
    out = {}
    for method, (preset, over) in settings.items():
        runs = [run_scan(method=method, preset=preset, overrides=over, prepared=prepared, seed=0, checkpoint=False,
                         execution=make_execution(name))[0] for name in ("default", "mirrored")]
        a, b = runs
        out[method] = {
            "replicas": [a.settings["replicas"], b.settings["replicas"]],
            "strategy": [a.settings["strategy"], b.settings["strategy"]],
            "mask": max(float(np.abs(x.mask - y.mask).max()) for x, y in zip(a.labels, b.labels)),
            "pattern": max(float(np.abs(x.pattern - y.pattern).max()) for x, y in zip(a.labels, b.labels)),
            "score": max(abs(x.score - y.score) / max(abs(x.score), 1e-6) for x, y in zip(a.labels, b.labels)),
            "steps": [[r.steps for r in a.labels], [r.steps for r in b.labels]],
            "flagged": [a.flagged_labels, b.flagged_labels],
            "index": [a.mad.anomaly_index, b.mad.anomaly_index],
        }
    # the engine alone, with batch shares that do not split evenly (7 = 3 + 4) or not at all (1 < 2),
    # and two batch orders (start_seeds, as the fresh-start confirmation runs)
    sys.path.insert(0, sys.argv[3])
    from test_tabor_engine import ConvVictim, cfg, data
    from tabor_tf.tabor.engine import TriggerEngine
    x, y = data()
    engines = [TriggerEngine(ConvVictim().logits, x, y, [0, 2, 4], cfg(steps=9, batch_size=7, blocking_batch_size=1),
                             preprocess="unit", seed=3, strategy=make_execution(name).strategy, start_seeds=[3, 3, 5])
               for name in ("default", "mirrored")]
    a, b = (e.run() for e in engines)
    copies = [v.numpy() for v in engines[1].m_t.values]
    out["engine"] = {"mask": float(np.abs(a.masks - b.masks).max()), "steps": [a.steps.tolist(), b.steps.tolist()],
                     "copies": len(copies), "in_sync": float(np.abs(copies[0] - copies[1]).max())}
    print("RESULT" + json.dumps(out))
""")


def test_two_replica_mirrored_scan_equals_the_single_device_scan(tiny_infected_victim):
    """TABOR and Neural Cleanse through ``run_scan``: MirroredStrategy over two logical CPUs
    (each replica takes half of every batch, gradients all-reduced, the victim's weights mirrored)
    gives the default strategy's masks, scores and flagged labels up to float noise."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", TWO_REPLICAS, tiny_infected_victim.model_path,
                           tiny_infected_victim.data_path, os.path.join(ROOT, "tests")],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    print(out)
    for method in ("tabor", "nc"):
        r = out[method]
        assert r["replicas"] == [1, 2] and r["strategy"] == ["default", "mirrored"]
        assert r["mask"] < 1e-3 and r["pattern"] < 0.5 and r["score"] < 1e-3
        assert r["steps"][0] == r["steps"][1] and r["flagged"][0] == r["flagged"][1]
        assert abs(r["index"][0] - r["index"][1]) < 1e-2
    e = out["engine"]
    assert e["mask"] < 1e-4 and e["steps"][0] == e["steps"][1]
    assert e["copies"] == 2 and e["in_sync"] == 0.0  # both replicas' variables got the same update


WORKER = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    from tabor_tf.distribute import make_execution
    execution = make_execution("multiworker")  # first: collective ops are configured at startup
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    from test_tabor_engine import ConvVictim, cfg, data
    from tabor_tf.tabor.engine import TriggerEngine
    x, y = data()
    runs = [TriggerEngine(ConvVictim().logits, x, y, [0, 2, 4], cfg(steps=6), preprocess="unit", seed=3,
                          strategy=s).run() for s in (None, execution.strategy)]
    print("RESULT" + json.dumps({"replicas": execution.replicas, "masks": runs[1].masks.tolist(),
                                 "diff": float(np.abs(runs[0].masks - runs[1].masks).max())}))
""")


def test_two_workers_from_tf_config_give_the_single_device_engine_result():
    """MultiWorkerMirroredStrategy with two local worker processes (TF_CONFIG each): both hold the
    same triggers, equal to a single-device run."""
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("localhost", 0))
            ports.append(s.getsockname()[1])
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, os.path.join(ROOT, "tests")], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=dict(env, TF_CONFIG=json.dumps({"cluster": cluster,
                                                                  "task": {"type": "worker", "index": i}})))
             for i in range(2)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:] + outs[1][1][-2000:]
    res = [json.loads(out.split("RESULT", 1)[1]) for out, _ in outs]
    assert [r["replicas"] for r in res] == [2, 2]
    assert all(r["diff"] < 1e-4 for r in res)
    np.testing.assert_array_equal(np.array(res[0]["masks"]), np.array(res[1]["masks"]))
