"""Train a victim with Keras ``fit`` (Adam) and measure it on held-out data.

Images are raw pixels 0..255; ``preprocess`` (default ``unit``) maps them to the model's input
domain before training (the saved model does not contain it, unless built with
``embed_preprocessing``, in which case the data is fed raw and the card says ``raw``).
"""

from __future__ import annotations

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


def attack_success_rate(model, x_raw, y, backdoor: Backdoor, preprocess: str) -> float:
    """Fraction of held-out images with true label != target classified as the target once stamped."""
    keep = np.asarray(y) != backdoor.target
    if not np.any(keep):
        return float("nan")
    stamped = apply_trigger(x_raw[keep], backdoor.trigger)
    return float(np.mean(predict_labels(model, stamped, preprocess) == backdoor.target))


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
    model.compile(
        optimizer=keras.optimizers.Adam(settings.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
        metrics=["accuracy"],
    )
    x = to_model_domain(x_train.astype(np.float32), preprocess)
    callbacks = []
    if log is not None:
        callbacks.append(_epoch_logger(log, settings.epochs))
    start = time.perf_counter()
    model.fit(
        x,
        np.asarray(y_train, np.int64),
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        shuffle=True,
        verbose=0,
        callbacks=callbacks,
    )
    return time.perf_counter() - start


def evaluate(model, x_test, y_test, backdoors: Sequence[Backdoor], preprocess: str) -> dict:
    """``{"clean_accuracy": float, "attack_success_rates": [float per backdoor]}`` on held-out data."""
    asr: List[float] = [attack_success_rate(model, x_test, y_test, bd, preprocess) for bd in backdoors]
    return {"clean_accuracy": clean_accuracy(model, x_test, y_test, preprocess), "attack_success_rates": asr}


def _epoch_logger(log: Callable[[str], None], epochs: int):
    """A Keras callback that reports one line per epoch through ``log``."""
    import keras

    class EpochLog(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            log(f"  epoch {epoch + 1}/{epochs}  loss {logs.get('loss', float('nan')):.4f}"
                f"  acc {logs.get('accuracy', float('nan')):.4f}")

    return EpochLog()
