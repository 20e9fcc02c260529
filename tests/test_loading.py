"""Loading the model under inspection: every format, true logits, safety, bad files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import h5py
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from tabor_tf.errors import ModelLoadError, TaborError, UnsafeModelError  # noqa: E402
from tabor_tf.loading import list_serving_versions, load_victim, sha256_path  # noqa: E402

SHAPE = (8, 8, 3)
K = 5


def _x(n=6, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, size=(n, *SHAPE)).astype(np.float32)


def _k3_functional(softmax=True, head="dense"):
    inp = keras.Input(SHAPE)
    h = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inp)
    h = keras.layers.Conv2D(4, 3, activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    if head == "dense":
        out = keras.layers.Dense(K, activation="softmax" if softmax else None)(h)
    elif head == "softmax_layer":
        out = keras.layers.Softmax()(keras.layers.Dense(K)(h))
    else:  # activation layer
        out = keras.layers.Activation("softmax")(keras.layers.Dense(K)(h))
    return keras.Model(inp, out)


def _k2_models():
    import tf_keras as k2

    seq = k2.Sequential([
        k2.layers.Conv2D(4, 3, activation="relu", input_shape=SHAPE),
        k2.layers.BatchNormalization(),
        k2.layers.MaxPooling2D(),
        k2.layers.Flatten(),
        k2.layers.Dropout(0.2),
        k2.layers.Dense(K, activation="softmax"),
    ])
    inp = k2.Input(SHAPE)
    h = k2.layers.Rescaling(1 / 255.0)(inp)
    h = k2.layers.Conv2D(4, 3, activation="relu")(h)
    h = k2.layers.GlobalAveragePooling2D()(h)
    func = k2.Model(inp, k2.layers.Dense(K)(h))
    return seq, func


def _keras22_file(src_h5: str, dst: str, as_list: bool = True) -> None:
    """Rewrite a tf.keras Sequential h5 so that its config looks like Keras 2.2.4's: a plain list
    of layers (Keras 2.3 / early tf.keras: a dict without InputLayer), ``batch_input_shape`` on the
    first layer, old initializer spellings."""
    shutil.copy(src_h5, dst)
    with h5py.File(dst, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        layers = [l for l in config["config"]["layers"] if l["class_name"] != "InputLayer"]
        for i, layer in enumerate(layers):
            cfg = layer["config"]
            cfg["dtype"] = "float32"
            for key, value in list(cfg.items()):
                if key.endswith("_initializer") and isinstance(value, dict):
                    cfg[key] = {"class_name": "VarianceScaling",
                                "config": {"scale": 2.0, "mode": "fan_in", "distribution": "normal", "seed": None}}
            if i == 0:
                cfg["batch_input_shape"] = [None, *SHAPE]
            layer.pop("module", None)
            layer.pop("registered_name", None)
        config = layers if as_list else {"name": "sequential_23", "layers": layers}
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": config}).encode()
        f.attrs["keras_version"] = b"2.2.4" if as_list else b"2.3.1"


def _marker_lambda(marker: str):
    return eval(f"lambda t: (open({marker!r}, 'w').close(), t * 1.0)[1]")  # noqa: S307 - test fixture


def test_keras2_layers_gone_from_keras3_get_a_clear_error(tmp_path):
    import tf_keras as k2

    m = k2.Sequential([k2.layers.Flatten(input_shape=SHAPE), k2.layers.Dense(K),
                       k2.layers.ThresholdedReLU(0.1, name="thr")])
    m.save(str(tmp_path / "thr.h5"))
    with pytest.raises(ModelLoadError, match="'thr' \\(ThresholdedReLU\\).*Keras 3 no longer has") as info:
        load_victim(tmp_path / "thr.h5")
    assert not isinstance(info.value, UnsafeModelError)


class WriterModule(tf.Module):
    """A SavedModel whose serving function writes a file (a graph op, no Python)."""

    def __init__(self, marker):
        super().__init__()
        self.marker = marker
        self.w = tf.Variable(tf.random.stateless_normal([int(np.prod(SHAPE)), K], seed=[1, 2]) * 0.01)

    @tf.function(input_signature=[tf.TensorSpec([None, *SHAPE], tf.float32)])
    def serve(self, x):
        tf.io.write_file(self.marker, "ran")
        return {"probs": tf.nn.softmax(tf.reshape(x, [-1, int(np.prod(SHAPE))]) @ self.w)}


class LogitsModule(tf.Module):
    def __init__(self, k):
        super().__init__()
        self.w = tf.Variable(tf.random.stateless_normal([int(np.prod(SHAPE)), k], seed=[3, 4]) * 0.01)

    @tf.function(input_signature=[tf.TensorSpec([None, *SHAPE], tf.float32)])
    def serve(self, x):
        return {"scores": tf.reshape(x, [-1, int(np.prod(SHAPE))]) @ self.w}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(0)
    refs = {}

    def add(name, path, model):
        refs[name] = (str(path), model)

    m = _k3_functional()
    m.save(root / "k3.keras")
    m.save(root / "k3.h5")
    m.export(str(root / "k3_export"), verbose=False)
    tf.saved_model.save(m, str(root / "k3_tfsave"))
    for name in ("k3.keras", "k3.h5", "k3_export", "k3_tfsave"):
        add(name, root / name, m)
    logit = _k3_functional(softmax=False)
    logit.save(root / "k3_logits.keras")
    add("k3_logits.keras", root / "k3_logits.keras", logit)
    for head in ("softmax_layer", "activation"):
        mh = _k3_functional(head=head)
        mh.save(root / f"k3_{head}.keras")
        add(f"k3_{head}.keras", root / f"k3_{head}.keras", mh)
    nested = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(),
                               keras.Sequential([keras.layers.Dense(6, activation="relu"),
                                                 keras.layers.Dense(K, activation="softmax")])])
    nested.save(root / "nested.keras")
    add("nested.keras", root / "nested.keras", nested)

    seq, func = _k2_models()
    seq.save(str(root / "k2_seq.h5"))
    func.save(str(root / "k2_func.hdf5"))
    func.save(str(root / "k2_savedmodel"))  # tf.keras SavedModel with keras_metadata.pb
    add("k2_seq.h5", root / "k2_seq.h5", seq)
    add("k2_func.hdf5", root / "k2_func.hdf5", func)
    add("k2_savedmodel", root / "k2_savedmodel", func)
    _keras22_file(str(root / "k2_seq.h5"), str(root / "k22_seq.h5"))
    add("k22_seq.h5", root / "k22_seq.h5", seq)
    _keras22_file(str(root / "k2_seq.h5"), str(root / "k23_seq.h5"), as_list=False)
    add("k23_seq.h5", root / "k23_seq.h5", seq)

    serving = root / "serving" / "signs"
    tf.saved_model.save(LogitsModule(3), str(serving / "1"))
    tf.saved_model.save(LogitsModule(4), str(serving / "3"))
    (serving / "7_notes").mkdir()
    return root, refs


FORMATS = {
    "k3.keras": ("keras", "probabilities"),
    "k3.h5": ("keras3-h5", "probabilities"),
    "k3_export": ("savedmodel", "probabilities"),
    "k3_tfsave": ("savedmodel", "probabilities"),
    "k3_logits.keras": ("keras", "logits"),
    "k3_softmax_layer.keras": ("keras", "probabilities"),
    "k3_activation.keras": ("keras", "probabilities"),
    "nested.keras": ("keras", "probabilities"),
    "k2_seq.h5": ("keras2-h5", "probabilities"),
    "k2_func.hdf5": ("keras2-h5", "logits"),
    "k2_savedmodel": ("savedmodel", "logits"),
    "k22_seq.h5": ("keras2-h5", "probabilities"),
    "k23_seq.h5": ("keras2-h5", "probabilities"),
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_matches_the_original_model(zoo, name):
    root, refs = zoo
    path, original = refs[name]
    fmt, kind = FORMATS[name]
    victim = load_victim(path)
    assert victim.format == fmt
    assert victim.output_kind == kind
    assert victim.input_shape == SHAPE and victim.num_classes == K and victim.channels == 3
    assert victim.sha256 == sha256_path(path)
    x = _x()
    expected = np.asarray(original(x, training=False))
    if kind == "logits":
        expected = tf.nn.softmax(expected).numpy()
    probs = victim.probabilities(x).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    logits = victim.logits(x).numpy()
    assert logits.shape == (len(x), K) and logits.dtype == np.float32
    np.testing.assert_allclose(tf.nn.softmax(logits).numpy(), probs, atol=1e-5)
    assert not victim.model.trainable if hasattr(victim.model, "trainable") else True
    np.testing.assert_array_equal(victim.predict_raw(x, "raw", batch_size=4), probs.argmax(1))
    if name in ("k22_seq.h5", "k23_seq.h5"):  # Keras 3's own reader fails on these: normalised rebuild
        assert any("normalised" in n for n in victim.notes)


def test_softmax_models_give_true_pre_softmax_logits(zoo):
    _, refs = zoo
    path, original = refs["k3.keras"]
    victim = load_victim(path)
    assert "pre-softmax" in victim.logits_source
    pre = keras.Model(original.inputs[0], original.layers[-2].output)(_x())
    dense = original.layers[-1]
    expected = pre.numpy() @ dense.kernel.numpy() + dense.bias.numpy()
    np.testing.assert_allclose(victim.logits(_x()).numpy(), expected, atol=1e-5)
    # exact logits survive where log(softmax) would saturate
    big = _x() * 0 + 255.0
    assert np.isfinite(victim.logits(big).numpy()).all()


def test_preprocessing_layers_and_param_count(zoo):
    _, refs = zoo
    victim = load_victim(refs["k3.keras"][0])
    assert [p.class_name for p in victim.preprocessing_layers] == ["Rescaling"]
    assert victim.preprocessing_layers[0].settings["offset"] == -1.0
    assert victim.param_count == refs["k3.keras"][1].count_params()
    assert load_victim(refs["k2_seq.h5"][0]).preprocessing_layers == ()
    sm = load_victim(refs["k2_savedmodel"][0])  # tf.keras metadata tells the layers
    assert [p.class_name for p in sm.preprocessing_layers] == ["Rescaling"]
    assert sm.param_count == refs["k2_savedmodel"][1].count_params()
    assert load_victim(refs["k3_export"][0]).preprocessing_layers is None  # cannot tell


@pytest.mark.parametrize("name", ["k3.keras", "k2_seq.h5", "k3_export", "k2_savedmodel"])
def test_gradients_reach_the_input_in_tf_function_and_strategy(zoo, name):
    victim = load_victim(zoo[1][name][0])
    x = tf.constant(_x(4))

    @tf.function
    def grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.nn.log_softmax(victim.logits(x))[:, 1])
        return tape.gradient(loss, x)

    g = grad(x).numpy()
    assert np.abs(g).sum() > 0 and np.isfinite(g).all()
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    out = strategy.run(tf.function(victim.logits), args=(x,))
    np.testing.assert_allclose(strategy.experimental_local_results(out)[0].numpy(),
                               victim.logits(x).numpy(), atol=1e-5)


def test_tf_serving_versions(zoo):
    root, _ = zoo
    base = root / "serving" / "signs"
    assert list_serving_versions(base) == [1, 3]
    latest = load_victim(base)
    assert latest.version == 3 and latest.format == "tf-serving" and latest.num_classes == 4
    assert latest.output_kind == "logits"
    first = load_victim(base, version=1)
    assert first.version == 1 and first.num_classes == 3
    with pytest.raises(ModelLoadError, match=r"version 2 not found.*1, 3"):
        load_victim(base, version=2)
    with pytest.raises(ModelLoadError, match="drop --model-version"):
        load_victim(base / "1", version=1)


# ------------------------------------------------------------------------------------------
# untrusted models


@pytest.fixture(scope="module")
def unsafe_files(tmp_path_factory):
    import tf_keras as k2

    root = tmp_path_factory.mktemp("unsafe")
    marker = str(root / "MARKER")
    inp = keras.Input(SHAPE)
    h = keras.layers.Lambda(_marker_lambda(marker), name="evil")(inp)
    out = keras.layers.Dense(K, activation="softmax")(keras.layers.Flatten()(h))
    m3 = keras.Model(inp, out)
    m3.save(root / "lambda.keras")
    m3.save(root / "lambda3.h5")
    m2 = k2.Sequential([k2.layers.Lambda(_marker_lambda(marker), input_shape=SHAPE, name="evil2"),
                        k2.layers.Flatten(), k2.layers.Dense(K, activation="softmax")])
    m2.save(str(root / "lambda2.h5"))
    m2.save(str(root / "lambda2_savedmodel"))  # tf.keras SavedModel: the Lambda is a traced graph

    @keras.saving.register_keras_serializable(package="Mine")
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return x * 2

    mc = keras.Sequential([keras.Input(SHAPE), Doubler(name="dbl"), keras.layers.Flatten(),
                           keras.layers.Dense(K)])
    mc.save(root / "custom.keras")
    tf.saved_model.save(WriterModule(marker), str(root / "writer_sm"))
    if os.path.exists(marker):
        os.remove(marker)  # building the Lambda models traced them once
    return root, marker


@pytest.mark.parametrize("name,layer", [("lambda.keras", "evil"), ("lambda3.h5", "evil"), ("lambda2.h5", "evil2")])
def test_lambda_models_are_refused_without_running_code(unsafe_files, name, layer):
    root, marker = unsafe_files
    with pytest.raises(UnsafeModelError, match=rf"'{layer}' \(Lambda\).*--allow-unsafe-deserialization"):
        load_victim(root / name)
    assert not os.path.exists(marker)


def test_saved_model_lambda_is_graph_only_and_loads_without_running_python(unsafe_files):
    root, marker = unsafe_files
    victim = load_victim(root / "lambda2_savedmodel")
    assert victim.format == "savedmodel" and victim.num_classes == K
    assert any("Lambda" in n and "no Python is run" in n for n in victim.notes)
    victim.probabilities(_x(2))
    assert not os.path.exists(marker)


def test_custom_layer_is_refused(unsafe_files):
    root, marker = unsafe_files
    with pytest.raises(UnsafeModelError, match=r"'dbl' \(Doubler\).*custom object"):
        load_victim(root / "custom.keras")


def test_allow_unsafe_loads_the_keras3_lambda_file(unsafe_files):
    root, marker = unsafe_files
    victim = load_victim(root / "lambda.keras", allow_unsafe=True)
    assert victim.num_classes == K and victim.output_kind == "probabilities"
    assert any("unsafe" in n for n in victim.notes)
    if os.path.exists(marker):
        os.remove(marker)


def test_saved_model_with_file_writing_op_is_refused(unsafe_files):
    root, marker = unsafe_files
    with pytest.raises(UnsafeModelError, match="WriteFile"):
        load_victim(root / "writer_sm")
    assert not os.path.exists(marker)
    victim = load_victim(root / "writer_sm", allow_unsafe=True)
    assert victim.output_kind == "probabilities"
    os.remove(marker)


# ------------------------------------------------------------------------------------------
# bad input


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest(), os.path.getmtime(path)


def test_corrupt_truncated_and_odd_files(zoo, tmp_path):
    root, refs = zoo
    data = open(refs["k2_seq.h5"][0], "rb").read()
    cases = {
        "truncated.h5": data[: len(data) // 2],
        "garbage.h5": b"this is not a model at all" * 10,
        "empty.keras": b"",
        "truncated.keras": open(refs["k3.keras"][0], "rb").read()[:300],
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        before = _digest(path)
        with pytest.raises(ModelLoadError) as info:
            load_victim(path)
        assert "\n" not in str(info.value) and str(info.value)
        assert _digest(path) == before
    with pytest.raises(ModelLoadError, match="model not found"):
        load_victim(tmp_path / "nope.h5")
    (tmp_path / "somedir").mkdir()
    with pytest.raises(ModelLoadError, match="not a SavedModel"):
        load_victim(tmp_path / "somedir")
    with pytest.raises(ModelLoadError, match="--model-version applies"):
        load_victim(refs["k3.keras"][0], version=2)


def test_weights_only_and_absurd_hdf5(zoo, tmp_path):
    root, refs = zoo
    refs["k3.keras"][1].save_weights(tmp_path / "only.weights.h5")
    with pytest.raises(ModelLoadError, match="only weights|no model_config"):
        load_victim(tmp_path / "only.weights.h5")
    absurd = tmp_path / "absurd.h5"
    shutil.copy(refs["k2_seq.h5"][0], absurd)
    with h5py.File(absurd, "r+") as f:  # declares 4 TB of weights, stores none
        f["model_weights"].create_dataset("huge", shape=(10**12,), dtype="float32")
    size = os.path.getsize(absurd)
    assert size < 10**6
    with pytest.raises(ModelLoadError, match="declares .* TB"):
        load_victim(absurd)
    import zipfile

    bomb = tmp_path / "bomb.keras"  # a .keras whose weights file declares 4 TB
    with zipfile.ZipFile(refs["k3.keras"][0]) as src, zipfile.ZipFile(bomb, "w") as dst:
        for info in src.infolist():
            payload = src.read(info)
            if info.filename == "model.weights.h5":
                (tmp_path / "w.h5").write_bytes(payload)
                with h5py.File(tmp_path / "w.h5", "r+") as f:
                    f.create_dataset("huge", shape=(10**12,), dtype="float32")
                payload = (tmp_path / "w.h5").read_bytes()
            dst.writestr(info.filename, payload)
    with pytest.raises(ModelLoadError, match="model.weights.h5.*declares .* TB"):
        load_victim(bomb)


def test_models_that_are_not_image_classifiers(tmp_path):
    flat = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10)])
    inp = keras.Input(SHAPE)
    h = keras.layers.Flatten()(inp)
    two_out = keras.Model(inp, [keras.layers.Dense(3)(h), keras.layers.Dense(2)(h)])
    a, b = keras.Input(SHAPE), keras.Input(SHAPE)
    two_in = keras.Model([a, b], keras.layers.Dense(3)(keras.layers.Flatten()(keras.layers.Add()([a, b]))))
    regression = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(1)])
    chw = keras.Sequential([keras.Input((3, 16, 16)), keras.layers.Flatten(), keras.layers.Dense(3)])
    cases = {"flat": (flat, "input has shape"), "two_out": (two_out, "2 outputs"),
             "two_in": (two_in, "2 inputs"), "regression": (regression, "single unit"),
             "chw": (chw, "channels-first")}
    for name, (model, msg) in cases.items():
        model.save(tmp_path / f"{name}.keras")
        with pytest.raises(ModelLoadError, match=msg):
            load_victim(tmp_path / f"{name}.keras")
    regression.export(str(tmp_path / "reg_sm"), verbose=False)
    with pytest.raises(ModelLoadError, match="single unit"):
        load_victim(tmp_path / "reg_sm")


def test_errors_are_tabor_errors():
    assert issubclass(UnsafeModelError, ModelLoadError) and issubclass(ModelLoadError, TaborError)
