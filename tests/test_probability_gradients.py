"""Probability-output models keep their attack gradients (issue 13, item 1).

A model whose softmax cannot be split off as a Keras layer (``keras.ops.softmax``, every SavedModel)
is scanned on the input of its graph's Softmax op; when there is no such op, on log(p) with a
gradient that stays exact down to the smallest float32 normal. Before, logits were
log(clip(p, 1e-12)): every label a confident model gave p < 1e-12 had an exactly zero gradient.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from tabor_tf.loading import load_victim  # noqa: E402
from tabor_tf.loading.victim import log_probabilities  # noqa: E402

SHAPE = (4, 4, 1)
K = 5
# Logits of the confident input: gaps of 42..60 below the top label (p from 1e-19 down to 9e-27).
Z0 = np.array([50.0, 0.0, -10.0, 8.0, -6.0])


def _linear_head(seed=0):
    """(W [16, K], b [K], x0 [1, 4, 4, 1]) with W x0 + b == Z0."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(int(np.prod(SHAPE)), K)) * 0.5
    x0 = rng.uniform(0, 1, size=(1, *SHAPE))
    b = Z0 - x0.reshape(1, -1) @ w
    return w.astype(np.float32), b[0].astype(np.float32), x0.astype(np.float32)


def _true_ce_gradients(w, b, x):
    """float64 d CE(softmax(W x + b), t) / dx for every target t -> [K, *x.shape]."""
    z = x.reshape(len(x), -1).astype(np.float64) @ w + b
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = []
    for t in range(K):
        dz = p.copy()
        dz[:, t] = -np.delete(p, t, axis=1).sum(1)  # p_t - 1 without the rounding of 1 - 1e-19
        out.append((dz @ w.T).reshape(x.shape))
    return np.stack(out)


def _ce_gradients(logits_fn, x):
    """d CE(logits_fn(x), t) / dx for every target t -> [K, *x.shape] (sum over the batch)."""
    x = tf.constant(x)
    out = []
    for t in range(K):
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = logits_fn(x)
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.fill([len(x)], t), logits=logits)
            loss = tf.reduce_sum(ce)
        out.append(tape.gradient(loss, x).numpy())
    return np.stack(out)


def _ops_softmax_model(w, b):
    """A functional model ending in ``keras.ops.softmax``: no Softmax layer to split off."""
    inp = keras.Input(SHAPE)
    dense = keras.layers.Dense(K)
    z = dense(keras.layers.Flatten()(inp))
    model = keras.Model(inp, keras.ops.softmax(z))
    dense.set_weights([w, b])
    return model


class ManualSoftmax(tf.Module):
    """Probabilities computed as exp / sum (no Softmax op): logits cannot be recovered."""

    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = tf.Variable(w), tf.Variable(b)

    @tf.function(input_signature=[tf.TensorSpec([None, *SHAPE], tf.float32)])
    def serve(self, x):
        z = tf.reshape(x, [-1, int(np.prod(SHAPE))]) @ self.w + self.b
        e = tf.exp(z - tf.reduce_max(z, axis=-1, keepdims=True))
        return {"probs": e / tf.reduce_sum(e, axis=-1, keepdims=True)}


@pytest.mark.parametrize("form", ["keras", "export", "tf_saved_model"])
def test_confident_ops_softmax_model_gives_every_label_its_true_gradient(form, tmp_path):
    w, b, x0 = _linear_head()
    model = _ops_softmax_model(w, b)
    path = tmp_path / ("m.keras" if form == "keras" else "sm")
    if form == "keras":
        model.save(path)
    elif form == "export":
        model.export(str(path), verbose=False)
    else:
        tf.saved_model.save(model, str(path))
    victim = load_victim(path)
    assert victim.output_kind == "probabilities"
    got, want = _ce_gradients(victim.logits, x0), _true_ce_gradients(w, b, x0)
    norms = np.linalg.norm(got.reshape(K, -1), axis=1)
    print(f"\n{form}: |dCE_t/dx| per label {norms} (true {np.linalg.norm(want.reshape(K, -1), axis=1)})")
    assert np.isfinite(got).all() and (norms > 0).all(), norms
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())
    np.testing.assert_allclose(victim.logits(x0).numpy()[0], Z0, atol=1e-4)  # the true logits
    np.testing.assert_allclose(tf.nn.softmax(victim.logits(x0)).numpy(), victim.probabilities(x0).numpy(), atol=1e-6)
    assert victim.logits_source.startswith("pre-softmax logits recovered from the graph's Softmax op")


def test_log_probability_fallback_keeps_a_finite_true_gradient(tmp_path):
    w, b, x0 = _linear_head()
    tf.saved_model.save(ManualSoftmax(w, b), str(tmp_path / "manual"))
    victim = load_victim(tmp_path / "manual")
    assert victim.output_kind == "probabilities"
    p = victim.probabilities(x0).numpy()[0]
    assert (p[1:] < 1e-18).all() and (p[1:] > 1e-30).all()
    got, want = _ce_gradients(victim.logits, x0), _true_ce_gradients(w, b, x0)
    print("\nfallback: |dCE_t/dx| per label", np.linalg.norm(got.reshape(K, -1), axis=1))
    assert np.isfinite(got).all()
    for t in range(K):  # every label: the gradient of the true logits, to within 1% (relative)
        rel = np.linalg.norm(got[t] - want[t]) / np.linalg.norm(want[t])
        assert rel < 0.01, (t, rel)
    assert victim.logits_source.startswith("log of the output probabilities")
    assert any("could not be recovered" in n for n in victim.notes)
    # p == 0 exactly (a gap of 130: exp underflows): finite gradients, no inf / NaN
    zero = ManualSoftmax(w, (b + np.array([0, 0, -120, 0, 0])).astype(np.float32))
    logits_fn = log_probabilities(lambda x: zero.serve(x)["probs"])
    assert zero.serve(tf.constant(x0))["probs"].numpy()[0, 2] == 0.0
    assert np.isfinite(_ce_gradients(logits_fn, x0)).all()


def _conv_softmax_model(seed=1):
    """Small conv classifier ending in Dense(softmax), its head scaled to logit gaps of at most 70."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Rescaling(1 / 255.0)(inp)
    h = keras.layers.Conv2D(4, 3, activation="relu")(h)
    h = keras.layers.Flatten()(h)
    head = keras.layers.Dense(K, activation="softmax")
    model = keras.Model(inp, head(h))
    x = np.random.default_rng(seed).uniform(0, 255, size=(6, 8, 8, 3)).astype(np.float32)
    z = keras.Model(inp, h)(x).numpy() @ head.kernel.numpy() + head.bias.numpy()
    scale = 70.0 / (z.max(1) - z.min(1)).max()
    head.set_weights([head.kernel.numpy() * scale, head.bias.numpy() * scale])
    return model, x


def test_h5_and_saved_model_give_the_same_logits_gradients(tmp_path):
    model, x = _conv_softmax_model()
    model.save(tmp_path / "m.h5")
    model.export(str(tmp_path / "export"), verbose=False)
    tf.saved_model.save(model, str(tmp_path / "tfsave"))
    h5 = load_victim(tmp_path / "m.h5")
    p = h5.probabilities(x).numpy()
    assert (p < 1e-12).mean() > 0.3 and p.min() > 1e-35  # confident, yet no probability underflows
    want = _ce_gradients(h5.logits, x)
    for name in ("export", "tfsave"):
        sm = load_victim(tmp_path / name)
        np.testing.assert_allclose(tf.nn.softmax(sm.logits(x)).numpy(), p, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(_ce_gradients(sm.logits, x), want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
        assert sm.format == "savedmodel" and "recovered" in sm.logits_source


# ----- end to end: a confident backdoored victim as .h5 and as a SavedModel ---------------------
# The tiny infected victim of conftest (square trigger -> 7) with its final Dense scaled by SCALE:
# the same predictions, a sharper softmax. Scanned through its SavedModel export with the old
# log(clip(p, 1e-12)) logits, TABOR (scale 7) flagged [7, 4] against [7] for the .h5, and Neural
# Cleanse (scale 100) found triggers 6x too large for labels 2, 4 and 5 (L1 ~520 against ~85).


@pytest.fixture(scope="module")
def confident_victims(tiny_infected_victim, tmp_path_factory):
    """scale -> (.h5 path, SavedModel path) of the scaled tiny infected victim."""
    made = {}

    def make(scale: float):
        if scale not in made:
            root = tmp_path_factory.mktemp(f"confident-{scale:g}")
            model = keras.models.load_model(tiny_infected_victim.model_path)  # built by conftest
            head = model.layers[-1]
            head.set_weights([v * scale for v in head.get_weights()])
            model.save(root / "model.h5")
            model.export(str(root / "sm"), verbose=False)
            made[scale] = (str(root / "model.h5"), str(root / "sm"))
        return made[scale]

    return make


def _scan_both(paths, tiny, method, preset, overrides, max_samples):
    from tabor_tf.scanning import run_scan

    out = []
    for path in paths:
        res, _ = run_scan(path, tiny.data_path, method=method, preprocess=tiny.preprocess, preset=preset,
                          overrides=overrides, max_samples=max_samples, seed=0, html=False)
        print(f"\n{method} {os.path.basename(path)}: {res.verdict} {res.flagged_labels}"
              f" index {res.mad.anomaly_index:.2f} scores {[round(r.score, 1) for r in res.labels]}"
              f" ({res.seconds:.0f}s)")
        out.append(res)
    return out


def test_tabor_verdict_is_the_same_for_h5_and_saved_model(confident_victims, tiny_infected_victim):
    h5, sm = _scan_both(confident_victims(7.0), tiny_infected_victim, "tabor", "fast", {}, 400)
    assert h5.verdict == sm.verdict == "infected"
    assert h5.flagged_labels == sm.flagged_labels == [7]


def test_nc_verdict_and_trigger_sizes_are_the_same_for_h5_and_saved_model(confident_victims, tiny_infected_victim):
    h5, sm = _scan_both(confident_victims(100.0), tiny_infected_victim, "nc", "gtsrb",
                        dict(steps=200, mini_batch=2), 200)
    assert h5.verdict == sm.verdict == "infected"
    assert h5.flagged_labels == sm.flagged_labels == [7]
    l1_h5, l1_sm = (np.array([r.l1 for r in res.labels]) for res in (h5, sm))
    assert np.all(np.abs(l1_sm - l1_h5) < 0.25 * l1_h5), (l1_h5.round(1), l1_sm.round(1))
