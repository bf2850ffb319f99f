"""engine/layers/conv.py: Conv2D, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D,
StochasticPooling2D, the adaptive poolings and SpatialPyramidPooling2D through the harness
against direct numpy loops written here; max pooling's ties, stochastic pooling's draws, a
1x1 convolution as a Dense, the errors, a small CNN that trains, saves and loads; and the
kernels under Conv2D split into chunks of samples or between threads."""
from __future__ import annotations

import math

import numpy as np
import pytest

import dlrun as dl
from dlrun import ops
from dlrun.errors import ConfigError, ShapeError
from dlrun.ops import Spec

L = dl.layers
TOL = {"rtol": 1e-5, "atol": 1e-5}


def images(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- independent references ----------------------------------------------------------------
def pad_same(x, k, s):
    """TensorFlow's 'same' padding of the last two axes, and the output size."""
    pads, outs = [], []
    for size, kk, ss in zip(x.shape[2:], k, s):
        out = -(-size // ss)
        total = max((out - 1) * ss + kk - size, 0)
        pads.append((total // 2, total - total // 2))
        outs.append(out)
    return pads, outs


def conv_ref(x, w, b, strides, padding):
    """Direct convolution, one output pixel at a time."""
    kh, kw = w.shape[2:]
    if padding == "same":
        pads, _ = pad_same(x, (kh, kw), strides)
        x = np.pad(x, ((0, 0), (0, 0), *pads))
    oh = (x.shape[2] - kh) // strides[0] + 1
    ow = (x.shape[3] - kw) // strides[1] + 1
    y = np.zeros((x.shape[0], w.shape[0], oh, ow))
    for p in range(oh):
        for q in range(ow):
            patch = x[:, :, p * strides[0]:p * strides[0] + kh, q * strides[1]:q * strides[1] + kw]
            y[:, :, p, q] = np.tensordot(patch, w, axes=([1, 2, 3], [1, 2, 3])) + b
    return y


def pool_ref(x, k, s, padding, fn):
    """Pooling with padded positions left out (NaN, skipped by nanmax / nanmean)."""
    x = x.astype(np.float64)
    if padding == "same":
        pads, _ = pad_same(x, k, s)
        x = np.pad(x, ((0, 0), (0, 0), *pads), constant_values=np.nan)
    oh = (x.shape[2] - k[0]) // s[0] + 1
    ow = (x.shape[3] - k[1]) // s[1] + 1
    y = np.zeros(x.shape[:2] + (oh, ow))
    for p in range(oh):
        for q in range(ow):
            y[:, :, p, q] = fn(x[:, :, p * s[0]:p * s[0] + k[0], q * s[1]:q * s[1] + k[1]],
                               axis=(2, 3))
    return y


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


# -- through the harness ---------------------------------------------------------------------
@pytest.mark.parametrize("kernel,strides,padding", [
    (3, 1, "valid"), (3, 1, "same"), ((2, 3), (2, 1), "same"), (3, 2, "valid"), (4, 3, "same")])
def test_conv2d(check_layer, kernel, strides, padding):
    check_layer(L.Conv2D, (2, 7, 6),
                lambda x, w, b: conv_ref(x, w, b, pair(strides), padding),
                filters=4, kernel_size=kernel, strides=strides, padding=padding)


@pytest.mark.parametrize("activation,use_bias", [("relu", True), ("tanh", True),
                                                 ("relu", False), (None, False)])
def test_conv2d_activation_and_bias_variants(check_layer, naive, activation, use_bias):
    act = naive.ACTIVATIONS[activation]

    def reference(x, w, b=0.0):
        return act(conv_ref(x, w, b, (1, 1), "same"))

    check_layer(L.Conv2D, (2, 5, 4), reference, filters=3, kernel_size=2, padding="same",
                activation=activation, use_bias=use_bias)


def test_conv2d_other_arguments(check_layer):
    """Initializer and regularizer survive the config; a 1x1 kernel takes its own path."""
    check_layer(L.Conv2D, (3, 4, 5),
                lambda x, w: np.maximum(conv_ref(x, w, 0.0, (2, 2), "same"), 0),
                filters=4, kernel_size=(2, 3), strides=2, padding="same", activation="relu",
                use_bias=False,
                kernel_initializer="he_normal", kernel_regularizer=dl.regularizers.l2(0.01))
    check_layer(L.Conv2D, (4, 3, 2), lambda x, w, b: conv_ref(x, w, b, (1, 1), "valid"),
                filters=5, kernel_size=1)


POOLS = [(2, None, "valid"), (2, 1, "valid"), (2, 2, "same"), (3, 2, "valid"), (3, 2, "same"),
         ((2, 3), 1, "same")]


@pytest.mark.parametrize("pool,strides,padding", POOLS)
def test_pooling(check_layer, pool, strides, padding):
    s = pair(pool if strides is None else strides)
    check_layer(L.MaxPooling2D, (2, 7, 6),
                lambda x: pool_ref(x, pair(pool), s, padding, np.nanmax),
                pool_size=pool, strides=strides, padding=padding)
    check_layer(L.AveragePooling2D, (2, 7, 6),
                lambda x: pool_ref(x, pair(pool), s, padding, np.nanmean),
                pool_size=pool, strides=strides, padding=padding)


def test_global_average_pooling(check_layer):
    check_layer(L.GlobalAveragePooling2D, (3, 4, 5), lambda x: x.mean(axis=(2, 3)))


def stochastic_mean_ref(x, k, s, padding):
    """Inference of stochastic pooling: sum a^2 / sum a per window, a = max(x, 0) (padded
    positions are 0: they add nothing to either sum)."""
    a = np.maximum(x, 0.0)
    if padding == "same":
        pads, _ = pad_same(a, k, s)
        a = np.pad(a, ((0, 0), (0, 0), *pads))
    oh, ow = (a.shape[2] - k[0]) // s[0] + 1, (a.shape[3] - k[1]) // s[1] + 1
    y = np.zeros(a.shape[:2] + (oh, ow))
    for p in range(oh):
        for q in range(ow):
            win = a[:, :, p * s[0]:p * s[0] + k[0], q * s[1]:q * s[1] + k[1]]
            s1, s2 = win.sum(axis=(2, 3)), (win * win).sum(axis=(2, 3))
            y[:, :, p, q] = np.divide(s2, s1, out=np.zeros_like(s1), where=s1 > 0)
    return y


def adaptive_ref(x, size, fn):
    """Output (p, q) pools rows floor(p H / oh) .. ceil((p + 1) H / oh), columns alike."""
    (h, w), (oh, ow) = x.shape[2:], size
    y = np.zeros(x.shape[:2] + (oh, ow))
    for p in range(oh):
        rows = slice(math.floor(p * h / oh), math.ceil((p + 1) * h / oh))
        for q in range(ow):
            cols = slice(math.floor(q * w / ow), math.ceil((q + 1) * w / ow))
            y[:, :, p, q] = fn(x[:, :, rows, cols], axis=(2, 3))
    return y


@pytest.mark.parametrize("pool,strides,padding", [(2, None, "valid"), (3, 2, "same")])
def test_stochastic_pooling(check_layer, pool, strides, padding):
    # inference: the probability-weighted average; the gradient check runs in training,
    # through the drawn elements
    s = pair(pool if strides is None else strides)
    check_layer(L.StochasticPooling2D, (2, 6, 5),
                lambda x: stochastic_mean_ref(x, pair(pool), s, padding),
                pool_size=pool, strides=strides, padding=padding)


@pytest.mark.parametrize("shape,size", [((2, 7, 5), (3, 2)), ((2, 7, 5), 4),
                                        ((1, 3, 2), (4, 3))])
def test_adaptive_pooling(check_layer, shape, size):
    check_layer(L.AdaptiveMaxPooling2D, shape, lambda x: adaptive_ref(x, pair(size), np.max),
                output_size=size)
    check_layer(L.AdaptiveAveragePooling2D, shape,
                lambda x: adaptive_ref(x, pair(size), np.mean), output_size=size)


@pytest.mark.parametrize("mode,fn", [("max", np.max), ("avg", np.mean)])
def test_spatial_pyramid_pooling(check_layer, mode, fn):
    def spp(x):
        return np.concatenate([adaptive_ref(x, (v, v), fn).reshape(len(x), -1)
                               for v in (1, 3, 2)], axis=1)

    check_layer(L.SpatialPyramidPooling2D, (2, 5, 6), spp, levels=(1, 3, 2), mode=mode)


# -- pooling kernels ---------------------------------------------------------------------------
@pytest.mark.parametrize("pool,strides,padding", POOLS)
def test_max_pool_records_the_argmax(pool, strides, padding):
    """The argmax the backward reads (a 2x2 window inside the image takes an unrolled
    kernel)."""
    x = images(2, 3, 7, 6)
    op = ops.get("max_pool2d")
    args = (pair(pool), pair(pool if strides is None else strides), padding)
    want_y, want_at = op.reference(x, *args)
    y, at = np.zeros(want_y.shape, x.dtype), np.zeros(want_at.shape, np.int64)
    op.forward(x, *args, y, at)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(at, want_at)


def test_max_pool_ties_send_the_gradient_to_the_first_maximum():
    x = np.array([[[[1.0, 3.0, 3.0, 0.0],
                    [3.0, 2.0, 0.0, 3.0]]]])                # each window ties on 3
    op = ops.get("max_pool2d")
    y = np.zeros((1, 1, 1, 2))
    at = np.zeros((1, 1, 1, 2), np.int64)
    op.forward(x, (2, 2), (2, 2), "valid", y, at)
    dx = np.full(x.shape, np.nan)
    op.backward(np.array([[[[10.0, 20.0]]]]), at, (2, 2), (2, 2), "valid", dx)
    want = np.zeros_like(x)
    want[0, 0, 0, 1], want[0, 0, 0, 2] = 10.0, 20.0       # row-major first of each window
    np.testing.assert_array_equal(y, [[[[3.0, 3.0]]]])
    np.testing.assert_array_equal(dx, want)


def test_stochastic_pooling_draws_by_value(run_layer):
    """4,000 draws from the window [[1, 2], [3, 4]]: each element about value / 10 of the
    time, their mean near the inference output 30 / 10; windows with nothing positive give
    0; another step draws again."""
    x = np.tile(np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), (4000, 1, 1, 1))
    layer = L.StochasticPooling2D(2)
    y = run_layer(layer, x, training=True, seed=1).ravel()
    for v in (1.0, 2.0, 3.0, 4.0):
        assert np.mean(y == v) == pytest.approx(v / 10, abs=0.02)    # s.e. <= 0.008
    assert y.mean() == pytest.approx(3.0, abs=0.07)                   # var 1: s.e. 0.016
    np.testing.assert_array_equal(run_layer(layer, x[:1]), [[[[3.0]]]])
    again = run_layer(layer, x, training=True, seed=2).ravel()
    assert np.mean(again != y) > 0.5
    nothing = np.array([[[[0.0, 0.0], [0.0, 0.0]]], [[[-1.0, 0.0], [-2.0, -3.0]]]],
                       np.float32)
    np.testing.assert_array_equal(run_layer(layer, nothing, training=True), 0.0)
    np.testing.assert_array_equal(run_layer(layer, nothing), 0.0)


def test_spatial_pyramid_pooling_gives_one_width_for_any_image_size():
    """A Dense after it takes the same weights for images of any size."""
    dl.set_seed(0)
    rng = np.random.default_rng(0)
    models = [dl.Sequential([
        L.Conv2D(3, 3, activation="relu", input_shape=(2, *hw)),
        L.SpatialPyramidPooling2D(levels=(1, 2), mode="avg"), L.Dense(4)])
        for hw in ((8, 8), (11, 7))]
    models[1].set_weights(models[0].get_weights())
    for model, hw in zip(models, ((8, 8), (11, 7))):
        assert model.layers[1].compute_output_shape((3, *hw)) == (15,)
        conv = model.layers[0].get_weights()
        x = rng.standard_normal((2, 2, *hw)).astype(np.float32)
        h = np.maximum(conv_ref(x, *conv, (1, 1), "valid"), 0)
        feat = np.concatenate([adaptive_ref(h, (v, v), np.mean).reshape(2, -1)
                               for v in (1, 2)], axis=1)
        w, b = model.layers[2].get_weights()
        np.testing.assert_allclose(model.predict(x), feat @ w + b, **TOL)


def test_new_pooling_errors_name_the_problem():
    with pytest.raises(ConfigError, match="AdaptiveMaxPooling2D output_size.*0"):
        L.AdaptiveMaxPooling2D(0)
    with pytest.raises(ConfigError, match=r"output_size.*\(2, 2, 2\)"):
        L.AdaptiveAveragePooling2D((2, 2, 2))
    with pytest.raises(ConfigError, match="level.*0"):
        L.SpatialPyramidPooling2D(levels=(1, 0))
    with pytest.raises(ConfigError, match="levels.*4"):
        L.SpatialPyramidPooling2D(levels=4)
    with pytest.raises(ConfigError, match="mode.*'min'"):
        L.SpatialPyramidPooling2D(mode="min")
    with pytest.raises(ShapeError, match="images"):
        L.SpatialPyramidPooling2D().compute_output_shape((10,))
    with pytest.raises(ConfigError, match="StochasticPooling2D pool_size"):
        L.StochasticPooling2D(0)


# -- Conv2D ------------------------------------------------------------------------------------
def test_conv1x1_equals_dense_on_the_channel_axis(run_layer):
    dl.set_seed(0)
    conv = L.Conv2D(5, 1)
    x = images(3, 4, 6, 7)
    run_layer(conv, x)
    w, b = conv.get_weights()
    dense = L.Dense(5)
    dense.ensure_built((4,))
    dense.set_weights([w[:, :, 0, 0].T, b])
    flat = x.transpose(0, 2, 3, 1).reshape(-1, 4)          # every pixel a sample
    want = run_layer(dense, flat).reshape(3, 6, 7, 5).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(run_layer(conv, x), want, **TOL)


def test_conv2d_errors_name_the_problem(run_layer):
    with pytest.raises(ConfigError, match="padding"):
        L.Conv2D(4, 3, padding="full")
    with pytest.raises(ConfigError, match="kernel_size"):
        L.Conv2D(4, 0)
    with pytest.raises(ConfigError, match="kernel_size.*None"):
        L.Conv2D(4, None)
    with pytest.raises(ConfigError, match="filters.*2.5"):
        L.Conv2D(2.5, 3)
    with pytest.raises(ShapeError, match="does not fit"):
        L.Conv2D(4, 5).compute_output_shape((1, 3, 3))
    with pytest.raises(ShapeError, match="images"):
        run_layer(L.Conv2D(4, 3), images(2, 10))
    with pytest.raises(ShapeError, match="images"):
        L.MaxPooling2D().compute_output_shape((10,))


def test_small_cnn_trains_saves_and_loads(tmp_path):
    dl.set_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 1, 8, 8)).astype(np.float32)
    y = (x[:, 0, :4].mean(axis=(1, 2)) > x[:, 0, 4:].mean(axis=(1, 2))).astype(np.int64)
    model = dl.Sequential([
        L.Conv2D(4, 3, padding="same", activation="relu", input_shape=(1, 8, 8)),
        L.BatchNormalization(), L.MaxPooling2D(2), L.Conv2D(4, 3, strides=2),
        L.AveragePooling2D(1), L.Flatten(), L.Dense(2, activation="softmax")])
    model.compile(optimizer=dl.optimizers.SGD(learning_rate=0.05, momentum=0.9),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    h = model.fit(x, y, batch_size=8, epochs=15, verbose=0).history
    assert h["loss"][-1] < 0.5 * h["loss"][0]
    model.save(tmp_path / "m")
    again = dl.load_model(tmp_path / "m")
    np.testing.assert_allclose(again.predict(x), model.predict(x), rtol=1e-6, atol=1e-6)


def test_zoo_cnn_and_lenet_shapes():
    from dlrun.engine.models import zoo

    for name, n in (("cnn", 1199882), ("lenet", None)):
        m = zoo.build(name, (1, 28, 28), 10)
        out = m.predict(np.zeros((2, 1, 28, 28), np.float32))
        assert out.shape == (2, 10)
        if n:
            assert m.count_params() == n                    # as Keras counts it
    flat = zoo.build("lenet", (784,), 10)
    assert flat.predict(np.zeros((2, 784), np.float32)).shape == (2, 10)


# -- the kernels under Conv2D ------------------------------------------------------------------
@pytest.mark.parametrize("strides,padding", [((1, 1), "valid"), ((2, 2), "valid"),
                                             ((1, 2), "same"), ((3, 2), "same")])
def test_conv2d_op_gradcheck_strides_and_paddings(strides, padding):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 2, 5, 6)), rng.standard_normal((3, 2, 3, 2))
    assert ops.gradcheck("conv2d", x, w, strides=strides, padding=padding)
    got = ops.get("conv2d")
    out = np.full(got.infer([Spec(x.shape, x.dtype), Spec(w.shape, w.dtype)],
                            {"strides": strides, "padding": padding})[0].shape, np.nan)
    got.forward(x, w, strides, padding, out)
    np.testing.assert_allclose(out, conv_ref(x, w, 0.0, strides, padding), rtol=1e-12)


@pytest.mark.parametrize("name", ["conv2d", "conv2d_bias"])
def test_conv2d_in_chunks_of_samples_equals_one_chunk(monkeypatch, name):
    """Real batches go through BLAS a few samples at a time; tiny test batches in one go."""
    from dlrun.ops import conv
    from dlrun.ops.gradcheck import run_backward, run_forward

    op = ops.get(name)
    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal((5, 2, 6, 5)), rng.standard_normal((3, 2, 3, 3)), \
        rng.standard_normal(3)
    inputs = (x, w, b)[:len(op.inputs)]
    attrs = {"strides": (2, 1), "padding": "same"} | ({"relu": True} if name != "conv2d" else {})
    outs = run_forward(op, inputs, attrs)
    dy = rng.standard_normal(outs[0].shape)
    grads = run_backward(op, inputs, outs, dy, attrs)
    monkeypatch.setattr(conv, "_chunk", lambda n, k, p: 2)      # chunks of 2, 2 and 1
    outs2 = run_forward(op, inputs, attrs)
    np.testing.assert_allclose(outs2[0], outs[0], rtol=1e-12, atol=1e-12)
    for g2, g in zip(run_backward(op, inputs, outs2, dy, attrs), grads):
        np.testing.assert_allclose(g2, g, rtol=1e-12, atol=1e-12)
    assert ops.gradcheck(name, *inputs, **attrs)


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
def test_conv_split_between_threads_matches_one_thread(monkeypatch, threads):
    """The CPU convolution splits its batch between threads (each with its own partial
    weight and bias gradients): any split gives what one thread gives."""
    from dlrun.ops import blas, conv

    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 3, 7, 6))
    w = rng.standard_normal((4, 3, 3, 2))
    b = rng.standard_normal(4)
    dy = rng.standard_normal((5, 4, 4, 3))

    def run(n):
        monkeypatch.setattr(blas, "_threads", n)
        y = np.empty((5, 4, 4, 3))
        conv.conv2d_bias_fwd_cpu(x, w, b, (2, 2), "same", True, y)
        dx, dw, db = np.empty_like(x), np.empty_like(w), np.empty_like(b)
        conv.conv2d_bias_bwd_cpu(dy, x, w, y, (2, 2), "same", True, dx, dw, db)
        return y, dx, dw, db

    for got, want in zip(run(threads), run(1)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_conv1x1_direct_products_match_the_reference_and_gradcheck(monkeypatch, relu, threads):
    """A 1x1 kernel (stride 1, no padding) multiplies each sample directly, without
    columns: forward against the numpy reference, backward by finite differences."""
    from dlrun.ops import blas, conv, gradcheck

    monkeypatch.setattr(blas, "_threads", threads)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 4, 2, 3))
    w = rng.standard_normal((5, 4, 1, 1))
    b = rng.standard_normal(5)
    y = np.full((3, 5, 2, 3), np.nan)
    conv.conv2d_bias_fwd_cpu(x, w, b, (1, 1), "valid", relu, y)
    want = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x) + b[None, :, None, None]
    np.testing.assert_allclose(y, np.maximum(want, 0) if relu else want, rtol=1e-12)
    assert gradcheck("conv2d_bias", x, w, b, strides=(1, 1), padding="valid", relu=relu)
