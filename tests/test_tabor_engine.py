"""The all-labels TABOR engine: batching, chunking, dropping labels, Adam, strategies."""

import numpy as np
import pytest
import tensorflow as tf

from tabor_tf.errors import TaborError
from tabor_tf.tabor import preset
from tabor_tf.tabor.engine import BatchOrder, TriggerEngine, adam_update, plan_chunks

H, W, C, K = 8, 8, 3, 5


class ConvVictim:
    """A fixed random conv net: Conv(4, 3x3, relu) -> Dense(K). The ``Victim`` contract in miniature."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.kernel = tf.constant(rng.normal(0, 0.3, (3, 3, C, 4)), tf.float32)
        self.dense = tf.constant(rng.normal(0, 0.05, (H * W * 4, K)), tf.float32)
        self.input_shape, self.num_classes = (H, W, C), K

    def logits(self, x):
        h = tf.nn.relu(tf.nn.conv2d(x, self.kernel, 1, "SAME"))
        return tf.reshape(h, [tf.shape(x)[0], -1]) @ self.dense


def data(n=24, seed=1):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, H, W, C)).astype(np.float32), rng.integers(0, K, n)


def cfg(**kw):
    base = dict(steps=12, batch_size=6, blocking_batch_size=2, round_steps=3, min_rounds=1,
                stability_patience=1, learning_rate=0.1, lambda_multiplier=2.0, attack_threshold=0.6)
    base.update(kw)
    return preset("fast", **base)


def run(labels, config, seed=3, strategy=None):
    x, y = data()
    engine = TriggerEngine(ConvVictim().logits, x, y, labels, config, preprocess="unit", seed=seed, strategy=strategy)
    return engine, engine.run()


def test_plan_chunks_pads_to_buckets_within_the_cap():
    chunks = plan_chunks(np.arange(10), labels_per_chunk=4, bucket=4)
    assert [n for _, n in chunks] == [4, 4, 2] and all(len(p) == 4 for p, _ in chunks)
    assert chunks[2][0].tolist() == [8, 9, 8, 8]  # padded with copies of the chunk's first label
    assert np.concatenate([p[:n] for p, n in chunks]).tolist() == list(range(10))
    one = plan_chunks(np.array([7, 9, 11]), labels_per_chunk=64, bucket=4)
    assert len(one) == 1 and one[0][0].tolist() == [7, 9, 11, 7] and one[0][1] == 3
    assert plan_chunks(np.array([], np.int32), 4, 4) == []
    assert [len(p) for p, _ in plan_chunks(np.arange(5), labels_per_chunk=2, bucket=4)] == [2, 2, 2]


def test_batch_order_is_fixed_size_and_covers_every_epoch():
    order = BatchOrder(10, 4, seed=0)
    seen = np.concatenate([order.next() for _ in range(5)])  # 20 indices = two epochs
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert seen[:10].tolist() != seen[10:].tolist()
    again = BatchOrder(10, 4, seed=0)
    assert np.concatenate([again.next() for _ in range(5)]).tolist() == seen.tolist()


def test_adam_update_matches_keras_adam_with_per_row_step_counts():
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(2, 3)).astype(np.float32) for _ in range(3)]
    var = tf.Variable(rng.normal(size=(2, 3)).astype(np.float32))
    keras_opt = tf.keras.optimizers.Adam(learning_rate=0.1, beta_1=0.5, beta_2=0.9, epsilon=1e-7)
    v, m, s, t = var.numpy(), np.zeros((2, 3), np.float32), np.zeros((2, 3), np.float32), np.zeros(2, np.float32)
    for g in grads:
        keras_opt.apply_gradients([(tf.constant(g), var)])
        v, m, s, t = (a.numpy() for a in adam_update(tf.constant(v), tf.constant(g), tf.constant(m), tf.constant(s),
                                                    tf.constant(t), lr=0.1, beta_1=0.5, beta_2=0.9))
    np.testing.assert_allclose(v, var.numpy(), rtol=1e-5, atol=1e-6)
    # a row with a different step count gets a different bias correction, the other row is untouched
    v2, _, _, t2 = adam_update(tf.constant(v), tf.constant(grads[0]), tf.constant(m), tf.constant(s),
                               tf.constant([3.0, 0.0]), lr=0.1, beta_1=0.5, beta_2=0.9)
    assert t2.numpy().tolist() == [4.0, 1.0]


def test_batched_equals_per_label_and_chunking_changes_nothing():
    config = cfg()
    _, together = run([0, 2, 4], config)
    # one label per forward pass (chunks padded with copies) must not change anything either
    _, chunked = run([0, 2, 4], cfg(max_images_per_step=20, label_bucket=2))
    for i, label in enumerate([0, 2, 4]):
        _, alone = run([label], config)
        np.testing.assert_allclose(together.masks[i], alone.masks[0], atol=2e-4)
        np.testing.assert_allclose(together.patterns[i], alone.patterns[0], atol=0.05)
        np.testing.assert_allclose(chunked.masks[i], alone.masks[0], atol=2e-4)
        assert together.steps[i] == alone.steps[0] and together.stop_reasons[i] == alone.stop_reasons[0]
        np.testing.assert_allclose(together.lambdas[i], alone.lambdas[0], rtol=1e-6)
    # the search really moved the triggers, and different labels found different ones
    assert not np.allclose(together.masks[0], together.masks[1], atol=1e-2)


def test_several_starts_of_one_label_run_as_one_search():
    """The fresh-start confirmation's layout: label 2 twice, from seeds 3 and 4 (initial trigger and
    batch order each). Each start is the search that seed runs alone; the starts differ."""
    config = cfg()
    x, y = data()
    both = TriggerEngine(ConvVictim().logits, x, y, [2, 2, 4], config, preprocess="unit", seed=3,
                         start_seeds=[3, 4, 4]).run()
    for i, (label, seed) in enumerate(((2, 3), (2, 4), (4, 4))):
        _, alone = run([label], config, seed=seed)
        np.testing.assert_allclose(both.masks[i], alone.masks[0], atol=2e-4)
        np.testing.assert_allclose(both.patterns[i], alone.patterns[0], atol=0.05)
        assert both.steps[i] == alone.steps[0] and both.stop_reasons[i] == alone.stop_reasons[0]
    assert both.labels == [2, 2, 4] and not np.allclose(both.masks[0], both.masks[1], atol=1e-2)
    with pytest.raises(TaborError, match="one seed per label position"):
        TriggerEngine(ConvVictim().logits, x, y, [2, 2], config, preprocess="unit", seed=3, start_seeds=[3])


def test_a_dropped_label_is_frozen_while_the_others_continue():
    config = cfg(steps=9)
    engine, _ = None, None
    x, y = data()
    engine = TriggerEngine(ConvVictim().logits, x, y, [1, 3], config, preprocess="unit", seed=3)
    engine.run_round()
    engine.state = engine.state._replace(active=tf.constant([True, False]))  # label 3 leaves the batch
    frozen = [v.numpy()[1].copy() for v in (engine.m_t, engine.p_t, engine.m_m, engine.v_m, engine.t)]
    engine.run_round()
    engine.run_round()
    after = [v.numpy()[1] for v in (engine.m_t, engine.p_t, engine.m_m, engine.v_m, engine.t)]
    for a, b in zip(frozen, after):
        np.testing.assert_array_equal(a, b)
    assert engine.t.numpy().tolist() == [9.0, 3.0]
    # label 1 kept going exactly as it would alone
    solo = TriggerEngine(ConvVictim().logits, x, y, [1], config, preprocess="unit", seed=3)
    for _ in range(3):
        solo.run_round()
    np.testing.assert_allclose(engine.m_t.numpy()[0], solo.m_t.numpy()[0], atol=2e-4)


def test_result_bookkeeping_and_image_count():
    engine, res = run([0, 1, 2, 3], cfg(steps=9, round_steps=3, stability_epsilon=0.0, stability_floor=0.0))
    assert res.labels == [0, 1, 2, 3] and res.masks.shape == (4, H, W) and res.patterns.shape == (4, H, W, C)
    assert res.steps.tolist() == [9] * 4 and res.stop_reasons == ["max_steps"] * 4
    assert len(res.history) == 3
    # 4 labels (already a multiple of the bucket) x (6 stamped + 2 cropped + 1 alone) per step
    assert res.image_steps == 9 * 4 * 9
    assert (res.masks >= 0).all() and (res.masks <= 1).all() and res.patterns.max() <= 255
    assert np.isfinite(res.best_terms).all()  # every label kept a trigger (the best round's terms)


def test_runs_under_a_distribution_strategy_with_the_same_result():
    config = cfg(steps=6)
    _, plain = run([0, 1], config)
    engine, under = run([0, 1], config, strategy=tf.distribute.OneDeviceStrategy("/cpu:0"))
    np.testing.assert_allclose(under.masks, plain.masks, atol=1e-5)
    assert engine.strategy.extended.worker_devices


def test_clip_keeps_tanh_variables_recoverable():
    engine, _ = run([0, 1], cfg(steps=6, learning_rate=5.0, tanh_clip=2.0))
    assert np.abs(engine.m_t.numpy()).max() <= 2.0 + 1e-6 and np.abs(engine.p_t.numpy()).max() <= 2.0 + 1e-6


def test_a_saved_state_resumes_to_the_uninterrupted_result(tmp_path):
    config = cfg(steps=15, round_steps=3, stability_epsilon=0.0, stability_floor=0.0, checkpoint_seconds=0.0)
    x, y = data()
    _, whole = run([0, 1, 2], config)
    first = TriggerEngine(ConvVictim().logits, x, y, [0, 1, 2], config, preprocess="unit", seed=3)
    first.history.append(first.run_round())
    first.history.append(first.run_round())
    path = first.save_state(tmp_path / "state.npz", fingerprint="abc")
    # a fresh engine (as after a killed process) continues from the file
    again = TriggerEngine(ConvVictim().logits, x, y, [0, 1, 2], config, preprocess="unit", seed=3)
    assert not again.load_state(path, fingerprint="other settings")  # another fingerprint is not resumed
    resumed = again.run(checkpoint_path=path, fingerprint="abc")
    assert again.steps_done == 15 and len(resumed.history) == 5
    np.testing.assert_array_equal(resumed.masks, whole.masks)
    np.testing.assert_array_equal(resumed.patterns, whole.patterns)
    np.testing.assert_array_equal(resumed.lambdas, whole.lambdas)
    assert resumed.image_steps == whole.image_steps and resumed.steps.tolist() == whole.steps.tolist()
    # the finished state is on disk too: loading it again needs no more steps
    done = TriggerEngine(ConvVictim().logits, x, y, [0, 1, 2], config, preprocess="unit", seed=3)
    assert done.load_state(path, fingerprint="abc") and done.steps_done == 15


def test_a_saved_state_with_several_batch_orders_resumes_every_order(tmp_path):
    config = cfg(steps=12, round_steps=3, stability_epsilon=0.0, stability_floor=0.0)
    x, y = data()

    def engine(seeds=(3, 4)):
        return TriggerEngine(ConvVictim().logits, x, y, [1, 1], config, preprocess="unit", seed=3, start_seeds=seeds)

    whole = engine().run()
    first = engine()
    first.run_round()
    first.run_round()
    path = first.save_state(tmp_path / "state.npz", fingerprint="abc")
    assert not engine(seeds=(3, 3)).load_state(path, fingerprint="abc")  # one batch order where there were two
    resumed = engine().run(checkpoint_path=path, fingerprint="abc")
    np.testing.assert_array_equal(resumed.masks, whole.masks)  # both starts continue their own batch order


class SlowVictim(ConvVictim):
    """``ConvVictim`` whose every forward pass also sleeps ``seconds`` (a slow model in miniature)."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def logits(self, x):
        def pause(v):
            import time

            time.sleep(self.seconds)
            return v

        x = tf.numpy_function(pause, [x], tf.float32, stateful=True)
        return super().logits(tf.ensure_shape(x, [None, H, W, C]))


def test_a_deadline_cuts_a_long_round_between_steps():
    """One round of 200 steps would take over 10 s; a 4 s deadline ends it after a few steps (the
    first traces the step function), the update still keeps triggers, and the labels stop with
    ``time_budget``."""
    import time

    from tabor_tf.tabor.engine import TIME_BUDGET

    x, y = data()
    config = cfg(steps=400, round_steps=200, min_rounds=100)
    engine = TriggerEngine(SlowVictim(0.05).logits, x, y, [0, 1, 2], config, preprocess="unit", seed=3)
    started = time.monotonic()
    result = engine.run(deadline=started + 4.0)
    elapsed = time.monotonic() - started
    assert elapsed < 4.0 + 0.5, elapsed  # no whole round after the deadline
    assert result.stop_reasons == [TIME_BUDGET] * 3 and result.time_limited
    assert len(engine.history) == 1 and 1 <= engine.history[0]["cut"] < 200
    assert int(result.steps.max()) == engine.history[0]["cut"] == engine.steps_done
    assert np.all(result.masks.sum(axis=(1, 2)) > 0)  # the cut round's update kept a trigger


def test_no_deadline_means_no_cut_rounds():
    engine, result = run([0, 1], cfg())
    assert not result.time_limited and all("cut" not in r for r in engine.history)
