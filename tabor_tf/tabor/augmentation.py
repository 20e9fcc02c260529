"""Hyperparameter augmentation (paper section 4.3) as a pure per-label state update.

Once per round (``round_steps`` optimisation steps) every active label reports the round means
of its six regularisation terms (before their lambdas, ``TERM_NAMES`` order) and its attack
success on the round's batches. Then, per label:

* attack success ``>= phi``: every lambda is multiplied by ``m``; otherwise divided by ``m``
  (clipped to ``[start * lambda_min_factor, start * lambda_max_factor]``);
* the trigger is *kept as the best one* when the success is ``>= phi`` and its regularisation
  at the starting lambdas (``sum_i start_i * term_i``, a fixed yardstick while the live lambdas
  move) is the smallest so far; until some round reaches ``phi``, the round with the highest
  success is kept instead, so a label always has a trigger to score;
* the label *converges* (leaves the batch) when every term of the objective (a term whose
  starting lambda is 0 is not one) has been stable for ``patience`` rounds in a row, ``|R(k) - R(k-1)| <= epsilon * max(|R(k)|, |R(k-1)|) + floor``, its success
  is ``>= phi`` and at least ``min_rounds`` rounds ran; it stops at ``max_rounds`` otherwise.

All arrays are TF tensors (numpy inputs work), ``K`` labels: the engine keeps them on the
device and updates only active labels.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

RUNNING, CONVERGED, MAX_STEPS = 0, 1, 2
STOP_REASONS = {RUNNING: "running", CONVERGED: "converged", MAX_STEPS: "max_steps"}


class AugmentState(NamedTuple):
    """Per-label bookkeeping, ``K`` labels, 6 terms."""

    lambdas: tf.Tensor  # [K,6] live lambdas
    prev_terms: tf.Tensor  # [K,6] last round's term means (NaN before the first round)
    best_score: tf.Tensor  # [K] regularisation at the start lambdas of the kept trigger (inf: none)
    best_success: tf.Tensor  # [K] round attack success of the kept trigger (-1: none)
    reached: tf.Tensor  # [K] bool: the kept trigger reached phi
    active: tf.Tensor  # [K] bool
    rounds: tf.Tensor  # [K] int32 rounds done
    stable_rounds: tf.Tensor  # [K] int32 consecutive rounds with every term stable
    stop_code: tf.Tensor  # [K] int32 RUNNING / CONVERGED / MAX_STEPS


class AugmentSettings(NamedTuple):
    start_lambdas: np.ndarray  # [6]
    phi: float
    multiplier: float
    epsilon: float
    floor: float
    min_rounds: int
    max_rounds: int
    patience: int = 1
    lambda_min_factor: float = 1.0
    lambda_max_factor: float = 1e6


def settings_from_config(config) -> AugmentSettings:
    return AugmentSettings(
        start_lambdas=np.asarray(config.lambdas, np.float32),
        phi=float(config.attack_threshold),
        multiplier=float(config.lambda_multiplier),
        epsilon=float(config.stability_epsilon),
        floor=float(config.stability_floor),
        min_rounds=int(config.min_rounds),
        patience=int(config.stability_patience),
        max_rounds=int(config.max_rounds),
        lambda_min_factor=float(config.lambda_min_factor),
        lambda_max_factor=float(config.lambda_max_factor),
    )


def initial_state(num_labels: int, settings: AugmentSettings) -> AugmentState:
    k = int(num_labels)
    start = tf.constant(settings.start_lambdas, tf.float32)
    return AugmentState(
        lambdas=tf.tile(start[None], [k, 1]),
        prev_terms=tf.fill([k, 6], float("nan")),
        best_score=tf.fill([k], float("inf")),
        best_success=tf.fill([k], -1.0),
        reached=tf.zeros([k], tf.bool),
        active=tf.ones([k], tf.bool),
        rounds=tf.zeros([k], tf.int32),
        stable_rounds=tf.zeros([k], tf.int32),
        stop_code=tf.zeros([k], tf.int32),
    )


def terms_stable(terms, prev_terms, epsilon: float, floor: float, used=None):
    """``[K,6]``, ``[K,6]`` -> ``[K]`` bool: every term changed by at most ``eps * max(|a|,|b|) + floor``.

    ``used [6]`` bool (default all): the terms that take part in the objective; the others (a
    lambda of 0, e.g. R4 switched off) are reported but cannot hold a label in the batch.
    """
    terms = tf.convert_to_tensor(terms, tf.float32)
    prev = tf.convert_to_tensor(prev_terms, tf.float32)
    change = tf.abs(terms - prev)
    bound = epsilon * tf.maximum(tf.abs(terms), tf.abs(prev)) + floor
    ok = tf.logical_and(tf.math.is_finite(prev), change <= bound)
    if used is not None:
        ok = tf.logical_or(ok, tf.logical_not(tf.constant(np.asarray(used, bool))[None]))
    return tf.reduce_all(ok, axis=1)


def regularisation_score(terms, start_lambdas):
    """Fixed yardstick for the best trigger: ``sum_i start_i * term_i``, ``[K,6] -> [K]``."""
    return tf.reduce_sum(tf.convert_to_tensor(terms, tf.float32) * tf.constant(start_lambdas, tf.float32)[None],
                         axis=1)


def update(state: AugmentState, terms, success, settings: AugmentSettings):
    """One round for every active label -> ``(new_state, improved [K] bool)``.

    ``terms [K,6]``: the round means of the terms before their lambdas; ``success [K]``: the
    round's attack success in [0, 1]. Inactive labels are left unchanged.
    """
    terms = tf.convert_to_tensor(terms, tf.float32)
    success = tf.convert_to_tensor(success, tf.float32)
    active = state.active
    ok = success >= settings.phi

    score = regularisation_score(terms, settings.start_lambdas)
    better_reached = tf.logical_and(ok, score < tf.where(state.reached, state.best_score, np.inf))
    better_unreached = tf.logical_and(
        tf.logical_and(tf.logical_not(ok), tf.logical_not(state.reached)), success > state.best_success
    )
    improved = tf.logical_and(active, tf.logical_or(better_reached, better_unreached))

    start = tf.constant(settings.start_lambdas, tf.float32)[None]
    factor = tf.where(ok, settings.multiplier, 1.0 / settings.multiplier)[:, None]
    lambdas = tf.clip_by_value(state.lambdas * factor, start * settings.lambda_min_factor,
                               start * settings.lambda_max_factor)

    rounds = state.rounds + tf.cast(active, tf.int32)
    stable = terms_stable(terms, state.prev_terms, settings.epsilon, settings.floor,
                          used=np.asarray(settings.start_lambdas) > 0)
    stable_rounds = tf.where(stable, state.stable_rounds + 1, 0)
    settled = tf.logical_and(active, stable_rounds >= settings.patience)
    converged = tf.logical_and(settled, tf.logical_and(ok, rounds >= settings.min_rounds))
    out_of_budget = tf.logical_and(tf.logical_and(active, tf.logical_not(converged)), rounds >= settings.max_rounds)
    stop_code = tf.where(converged, CONVERGED, tf.where(out_of_budget, MAX_STEPS, state.stop_code))

    act2 = active[:, None]
    new = AugmentState(
        lambdas=tf.where(act2, lambdas, state.lambdas),
        prev_terms=tf.where(act2, terms, state.prev_terms),
        best_score=tf.where(improved, tf.where(ok, score, np.inf), state.best_score),
        best_success=tf.where(improved, success, state.best_success),
        reached=tf.logical_or(state.reached, tf.logical_and(improved, ok)),
        active=tf.logical_and(active, tf.logical_not(tf.logical_or(converged, out_of_budget))),
        rounds=rounds,
        stable_rounds=tf.where(active, stable_rounds, state.stable_rounds),
        stop_code=stop_code,
    )
    return new, improved
