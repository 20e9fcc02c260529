"""Train a victim with Keras ``fit`` (Adam) and measure it on held-out data.

Images are raw pixels 0..255; ``preprocess`` (default ``unit``) maps them to the model's input
domain before training (the saved model does not contain it, unless built with
``embed_preprocessing``, in which case the data is fed raw and the card says ``raw``).
Optional knobs: ``lr_schedule`` (``constant`` or ``cosine``: Adam's rate decays to 0 over the
run along a half cosine, so the last epoch's model is a settled one), ``label_smoothing``
(cross-entropy on smoothed one-hot labels) and ``augment_shift`` (each training image moved by a
random whole-pixel shift of up to that many pixels per axis, edges replicated, redrawn every
epoch; no flips).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np

from ..preprocess import preprocess as to_model_domain
from .poisoning import Backdoor, apply_trigger


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings of one victim."""

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0
    label_smoothing: float = 0.0
    augment_shift: int = 0
    lr_schedule: str = "constant"

    def to_dict(self) -> dict:
        return asdict(self)


def predict_labels(model, x_raw: np.ndarray, preprocess: str, batch_size: int = 512) -> np.ndarray:
    """Labels ``[N]`` the model gives raw images ``[N,H,W,C]`` under ``preprocess``."""
    out = []
    for i in range(0, len(x_raw), batch_size):
        xb = to_model_domain(x_raw[i : i + batch_size].astype(np.float32), preprocess)
        out.append(np.argmax(np.asarray(model(xb, training=False)), axis=-1))
    return np.concatenate(out) if out else np.zeros((0,), np.int64)


def clean_accuracy(model, x_raw, y, preprocess: str) -> float:
    return float(np.mean(predict_labels(model, x_raw, preprocess) == np.asarray(y)))


def attack_success_rate(model, x_raw, y, backdoor: Backdoor, preprocess: str,
                        num_classes: Optional[int] = None) -> float:
    """Fraction of held-out images with true label != target classified as the target once stamped
    (all-to-all: fraction of all images classified ``(y+1) mod num_classes``)."""
    return _attack(model, x_raw, y, backdoor, preprocess, num_classes)[0]


def _attack(model, x_raw, y, backdoor: Backdoor, preprocess: str, num_classes: Optional[int]):
    """``(ASR, y_kept [M], hit [M] bool)`` of one backdoor on held-out images."""
    y = np.asarray(y)
    keep = y != backdoor.target
    if not np.any(keep):
        return float("nan"), y[:0], np.zeros((0,), bool)
    stamped = apply_trigger(x_raw[keep], backdoor.trigger)
    k = int(num_classes) if num_classes else int(np.max(y)) + 1
    hit = predict_labels(model, stamped, preprocess) == backdoor.relabel(y[keep], k)
    return float(np.mean(hit)), y[keep], hit


def train(
    model,
    x_train: np.ndarray,
    y_train: np.ndarray,
    settings: TrainSettings,
    *,
    preprocess: str = "unit",
    from_logits: bool = False,
    log: Optional[Callable[[str], None]] = None,
) -> float:
    """Compile ``model`` (Adam, sparse CE) and fit it on raw images mapped by ``preprocess``.

    ``from_logits``: the model outputs logits rather than softmax probabilities.

    Returns the training wall time in seconds.
    """
    import keras

    keras.utils.set_random_seed(settings.seed)
    y = np.asarray(y_train, np.int64)
    if settings.label_smoothing:
        num_classes = int(model.output_shape[-1])
        loss = keras.losses.CategoricalCrossentropy(from_logits=from_logits, label_smoothing=settings.label_smoothing)
        y = np.eye(num_classes, dtype=np.float32)[y]
        metric = keras.metrics.CategoricalAccuracy(name="accuracy")
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
        metric = "accuracy"
    rate = settings.learning_rate
    if settings.lr_schedule == "cosine":
        steps = settings.epochs * math.ceil(len(x_train) / settings.batch_size)
        rate = keras.optimizers.schedules.CosineDecay(settings.learning_rate, decay_steps=max(1, steps))
    elif settings.lr_schedule != "constant":
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', not {settings.lr_schedule!r}")
    model.compile(optimizer=keras.optimizers.Adam(rate), loss=loss, metrics=[metric])
    x = to_model_domain(x_train.astype(np.float32), preprocess)
    callbacks = []
    if log is not None:
        callbacks.append(_epoch_logger(log, settings.epochs))
    start = time.perf_counter()
    if settings.augment_shift:
        batches = shifted_batches(x, y, settings.batch_size, settings.augment_shift, settings.seed)
        model.fit(batches, epochs=settings.epochs, verbose=0, callbacks=callbacks)
    else:
        model.fit(x, y, epochs=settings.epochs, batch_size=settings.batch_size, shuffle=True, verbose=0,
                  callbacks=callbacks)
    return time.perf_counter() - start


def random_shift(x: np.ndarray, shift: int, rng: np.random.Generator) -> np.ndarray:
    """Move each image of ``x [B,H,W,C]`` by its own random ``(dy, dx)`` in ``-shift..shift`` pixels
    (edge pixels replicated into the gap); returns a new ``[B,H,W,C]`` array."""
    b, h, w = x.shape[:3]
    padded = np.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
    dy, dx = rng.integers(0, 2 * shift + 1, (2, b))
    rows = (dy[:, None] + np.arange(h))[:, :, None]
    cols = (dx[:, None] + np.arange(w))[:, None, :]
    return padded[np.arange(b)[:, None, None], rows, cols]


def shifted_batches(x: np.ndarray, y: np.ndarray, batch_size: int, shift: int, seed: int = 0):
    """A ``keras.utils.PyDataset`` of shuffled, randomly shifted batches (new order and shifts every
    epoch, deterministic in ``seed``)."""
    import keras

    class ShiftedBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.order = np.random.default_rng([seed, 0]).permutation(len(x))

        def __len__(self):
            return math.ceil(len(x) / batch_size)

        def __getitem__(self, i):
            rows = np.sort(self.order[i * batch_size : (i + 1) * batch_size])
            rng = np.random.default_rng([seed, self.epoch, i])
            return random_shift(x[rows], shift, rng), y[rows]

        def on_epoch_end(self):
            self.epoch += 1
            self.order = np.random.default_rng([seed, self.epoch]).permutation(len(x))

    return ShiftedBatches()


def evaluate(model, x_test, y_test, backdoors: Sequence[Backdoor], preprocess: str,
             num_classes: Optional[int] = None) -> dict:
    """``{"clean_accuracy": float, "attack_success_rates": [float per backdoor],
    "per_source": [None, or {source label: ASR} for an all-to-all backdoor]}`` on held-out data."""
    asr: List[float] = []
    per_source: List[Optional[dict]] = []
    for bd in backdoors:
        rate, y_kept, hit = _attack(model, x_test, y_test, bd, preprocess, num_classes)
        asr.append(rate)
        per_source.append(
            {int(c): float(np.mean(hit[y_kept == c])) for c in np.unique(y_kept)} if bd.all_to_all else None
        )
    return {"clean_accuracy": clean_accuracy(model, x_test, y_test, preprocess), "attack_success_rates": asr,
            "per_source": per_source}


def _epoch_logger(log: Callable[[str], None], epochs: int):
    """A Keras callback that reports one line per epoch through ``log``."""
    import keras

    class EpochLog(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            log(f"  epoch {epoch + 1}/{epochs}  loss {logs.get('loss', float('nan')):.4f}"
                f"  acc {logs.get('accuracy', float('nan')):.4f}")

    return EpochLog()
