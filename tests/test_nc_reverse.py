"""Per-label reverse engineering of the Neural Cleanse baseline on tiny hand-made victims."""

import math
import sys

import numpy as np
import pytest
import tensorflow as tf

from neural_cleanse_baseline import NCConfig, preset, scan_order
from neural_cleanse_baseline.reverse import BatchStream, Reverser, mask_norm, png8_l1, target_loss
from neural_cleanse_baseline.schedule import initial_state, update
from tabor_tf.errors import TaborError

H, W, C, K = 6, 6, 3, 4


class LinearVictim:
    """``logits = flatten(x) @ w + b`` with fixed weights: the ``Victim`` contract in miniature."""

    def __init__(self, w, b):
        self.w = tf.constant(w, tf.float32)
        self.b = tf.constant(b, tf.float32)
        self.input_shape = (H, W, C)
        self.num_classes = int(w.shape[1])

    def logits(self, x):
        return tf.reshape(tf.cast(x, tf.float32), [tf.shape(x)[0], -1]) @ self.w + self.b


def random_victim(seed=0, scale=0.01):
    rng = np.random.default_rng(seed)
    return LinearVictim(rng.normal(0, scale, (H * W * C, K)), np.zeros(K))


def patch_victim():
    """Label 0 wins only when the bottom-right 2x2 patch is bright (sum over its 12 values > 2400):
    a backdoor whose smallest trigger is that patch. Clean random images never reach label 0."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.0005, (H, W, C, K))
    w[..., 0] = 0.0
    w[4:, 4:, :, 0] = 0.02
    return LinearVictim(w.reshape(-1, K), np.array([-0.02 * 12 * 200, 0.0, 0.0, 0.0]))


def clean_images(n=40, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, H, W, C)).astype(np.float32)


def small(**kw):
    base = dict(steps=6, mini_batch=3, batch_size=8, patience=2, early_stop_patience=3)
    base.update(kw)
    return preset("gtsrb", **base)


def test_batch_stream_covers_each_epoch_once_with_a_short_last_batch():
    stream = BatchStream(10, 4, np.random.default_rng(0))
    batches = [stream.next() for _ in range(6)]
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    for epoch in (batches[:3], batches[3:]):
        assert sorted(np.concatenate(epoch).tolist()) == list(range(10))
    assert np.concatenate(batches[:3]).tolist() != np.concatenate(batches[3:]).tolist()  # reshuffled
    tiny = BatchStream(3, 32, np.random.default_rng(0))
    assert sorted(tiny.next().tolist()) == [0, 1, 2]


def test_losses_and_norms_by_hand():
    logits = tf.constant([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    p = tf.nn.softmax(logits).numpy()
    ce = target_loss(logits, 0, "softmax_ce").numpy()
    np.testing.assert_allclose(ce, -np.log(p[:, 0]), rtol=1e-5)
    ref = target_loss(logits, 0, "reference_keras22").numpy()
    # -sum_k p_k log(clip(onehot_k)) = -p_t log(1 - eps) - (1 - p_t) log(eps)
    expected = -p[:, 0] * np.log1p(-1e-7) - (1 - p[:, 0]) * np.log(1e-7)
    np.testing.assert_allclose(ref, expected, rtol=1e-4)
    mask = tf.constant([[[0.5], [0.0]], [[1.0], [0.5]]])
    assert float(mask_norm(mask, "l1")) == pytest.approx(2.0)
    assert float(mask_norm(mask, "l2")) == pytest.approx(math.sqrt(1.5))
    assert png8_l1(np.array([[0.5, 1.0], [0.003, 0.999]])) == pytest.approx((127 + 255 + 0 + 254) / 255)


def test_label_order_matches_the_reference():
    assert scan_order(5) == [0, 1, 2, 3, 4]
    assert scan_order(5, suspected=3) == [3, 0, 1, 2, 4]
    assert scan_order(6, labels=[5, 1, 1, 3], suspected=5) == [5, 1, 3]
    assert scan_order(6, labels=[4, 2, 0], suspected=1) == [0, 2, 4]
    with pytest.raises(TaborError):
        scan_order(4, labels=[7])


def test_config_presets_and_overrides():
    cfg = preset("gtsrb")
    assert (cfg.steps, cfg.mini_batch, cfg.batch_size, cfg.lr, cfg.beta_1, cfg.beta_2) == (1000, 31, 32, 0.1, 0.5, 0.9)
    assert (cfg.init_cost, cfg.attack_success_threshold) == (1e-3, 0.99)
    assert cfg.reset_cost_to_zero and cfg.early_stop
    assert (cfg.regularization, cfg.upsample_size, cfg.mad_threshold, cfg.suspected_target) == ("l1", 1, 2.0, None)
    ref = preset("reference_defaults", steps=10)
    assert (ref.patience, ref.cost_multiplier, ref.early_stop_threshold, ref.early_stop_patience, ref.steps) == (
        10, 1.5, 0.99, 20, 10)
    assert ref.to_dict()["preset"] == "reference-defaults" and cfg.to_dict()["patience"] == 5
    with pytest.raises(TaborError):
        preset("gtsrb", learning_rate=1)
    with pytest.raises(TaborError):
        preset("nope")
    with pytest.raises(TaborError):
        NCConfig(regularization="l3")


def test_train_step_is_adam_0_1_0_5_0_9_on_the_summed_loss():
    """Two steps of the compiled step against Adam written out in numpy on an independent loss."""
    victim = random_victim()
    x = clean_images(16)
    cfg = small(upsample_size=2)
    rev = Reverser(victim, x, "symmetric", cfg)
    rev.reset(2, np.random.default_rng(5), cost=0.05)
    params = [rev.pattern_t.numpy().astype(np.float64), rev.mask_t.numpy().astype(np.float64)]

    def loss_and_grads(pt, mt, idx):
        pt, mt = tf.constant(pt, tf.float64), tf.constant(mt, tf.float64)
        with tf.GradientTape() as tape:
            tape.watch([pt, mt])
            m = tf.tanh(mt) / (2 - 1e-7) + 0.5
            m = tf.repeat(tf.repeat(m, 2, axis=0), 2, axis=1)[:H, :W]
            p = (tf.tanh(pt) / (2 - 1e-7) + 0.5) * 255
            xr = tf.constant(x[idx], tf.float64)
            xa = ((1 - m) * xr + m * p) / 127.5 - 1
            logits = tf.reshape(xa, [len(idx), -1]) @ tf.cast(victim.w, tf.float64)
            ce = -tf.nn.log_softmax(logits)[:, 2]
            loss = tf.reduce_sum(ce + 0.05 * tf.reduce_sum(m))
        return [g.numpy() for g in tape.gradient(loss, [pt, mt])]

    m1 = [np.zeros_like(p) for p in params]
    v1 = [np.zeros_like(p) for p in params]
    batches = [np.arange(0, 8), np.arange(5, 16)]
    for t, idx in enumerate(batches, start=1):
        grads = loss_and_grads(params[0], params[1], idx)
        for i, g in enumerate(grads):
            m1[i] = 0.5 * m1[i] + 0.5 * g
            v1[i] = 0.9 * v1[i] + 0.1 * g * g
            alpha = 0.1 * math.sqrt(1 - 0.9**t) / (1 - 0.5**t)
            params[i] = params[i] - alpha * m1[i] / (np.sqrt(v1[i]) + 1e-7)
        rev.train_step(tf.constant(idx, tf.int32))
    np.testing.assert_allclose(rev.pattern_t.numpy(), params[0], atol=2e-4)
    np.testing.assert_allclose(rev.mask_t.numpy(), params[1], atol=2e-4)
    assert rev.mask_t.shape == (3, 3, 1)  # super-pixel grid of ceil(6 / 2)


def test_same_seed_same_result_so_optimizer_and_cost_are_fully_reset():
    victim = random_victim()
    x = clean_images()
    rev = Reverser(victim, x, "unit", small())
    a = rev.run(1, np.random.default_rng([0, 1]))
    rev.run(3, np.random.default_rng([0, 3]))  # leaves Adam moments and cost behind
    b = rev.run(1, np.random.default_rng([0, 1]))
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.pattern, b.pattern)
    assert a.logs == b.logs


def test_logs_replay_through_the_schedule_and_the_mask_finds_the_patch():
    """The loop applies exactly what ``schedule.update`` says, once per step, on the step means."""
    cfg = small(steps=80, patience=2, init_cost=0.05, early_stop_patience=4)
    rev = Reverser(patch_victim(), clean_images(), "raw", cfg)
    out = rev.run(0, np.random.default_rng(3))
    settings = cfg.schedule()
    state = initial_state(settings)
    for step, ce, reg, acc, reg_best, cost in out.logs:
        assert cost == state.cost
        state, actions = update(state, settings, acc, reg)
        assert reg_best == state.reg_best
    assert out.steps == len(out.logs) == state.step < 80
    assert actions.stop and out.stop_reason == "early_stop"
    assert out.reached_threshold and out.reg_best == min(r for _, _, r, a, _, _ in out.logs if a >= 0.99)
    costs = [log[5] for log in out.logs]
    assert costs[0] == 0 and max(costs) > cfg.init_cost  # started at zero, went up (and down)
    # the restored mask sits on the 2x2 patch, with a bright pattern there
    assert out.mask[4:, 4:].sum() > 0.9 * out.mask.sum() and out.mask[4:, 4:].min() > 0.3
    assert out.pattern[4:, 4:].mean() > 200
    assert rev.attack_success(out.mask, out.pattern, 0) >= 0.95


def test_best_mask_is_kept_not_the_last_one():
    cfg = small(steps=80, patience=2, init_cost=0.05, early_stop=False)
    rev = Reverser(patch_victim(), clean_images(), "raw", cfg)
    out = rev.run(0, np.random.default_rng(3))
    assert out.stop_reason == "max_steps" and out.steps == 80
    best_reg, best_step = min((r, s) for s, _, r, a, _, _ in out.logs if a >= 0.99)
    assert best_step < 80 and out.reg_best == best_reg
    last_mask = rev.mask_upsampled().numpy()[..., 0]
    assert not np.allclose(out.mask, last_mask, atol=1e-3)
    # as in the reference, the best mask is the one at the END of the step whose batch averages
    # passed the threshold (during the step it was still moving), so its re-measured attack
    # success can fall short of 0.99; it is still a working trigger
    assert rev.attack_success(out.mask, out.pattern, 0) >= 0.6


def test_no_mask_reaching_the_threshold_returns_the_last_mask():
    w = np.zeros((H * W * C, K))
    victim = LinearVictim(w, np.array([9.0, 0.0, 0.0, 0.0]))  # label 3 is never reachable
    cfg = small(steps=4)
    rev = Reverser(victim, clean_images(), "raw", cfg)
    seen = []
    out = rev.run(3, np.random.default_rng(0), on_step=lambda step, stats: seen.append((step, stats["acc"])))
    assert not out.reached_threshold and out.reg_best == math.inf
    assert out.stop_reason == "max_steps" and out.steps == 4
    assert [s for s, _ in seen] == [1, 2, 3, 4] and all(a == 0.0 for _, a in seen)
    np.testing.assert_allclose(out.mask, rev.mask_upsampled().numpy()[..., 0])
    np.testing.assert_allclose(out.pattern, rev.pattern_raw().numpy())
    assert out.mask.shape == (H, W) and out.pattern.shape == (H, W, C)
    assert out.final_cost == 0.0  # never successful: the cost never left zero
    assert rev.attack_success(out.mask, out.pattern, 3) == 0.0


def test_two_replica_mirrored_strategy_gives_the_single_device_result():
    """Each replica takes its share of the batch; the summed loss makes the all-reduced gradients
    equal the single-device ones. Needs two logical CPUs, set before TF starts: a subprocess."""
    import subprocess
    import textwrap

    code = textwrap.dedent(f"""
        import os, sys
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).parent)!r})
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from test_nc_reverse import patch_victim, clean_images, small
        from neural_cleanse_baseline.reverse import Reverser
        cfg = small(steps=15, init_cost=0.05)
        with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
            a = Reverser(patch_victim(), clean_images(), "raw", cfg).run(0, np.random.default_rng(3))
        b = Reverser(patch_victim(), clean_images(), "raw", cfg).run(0, np.random.default_rng(3))
        assert a.steps == b.steps and [l[3] for l in a.logs] == [l[3] for l in b.logs]
        print("MAXDIFF", float(np.abs(a.mask - b.mask).max()), a.steps)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    diff = float(out.stdout.split("MAXDIFF")[1].split()[0])
    assert diff < 1e-4
