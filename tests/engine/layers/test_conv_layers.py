"""Image layers and the activation zoo, each against an independent numpy reference written
here: output values and shapes, get_config round trips, BatchNormalization's two modes and
moving statistics, ties in max pooling, and a small CNN that trains, saves and loads."""
from __future__ import annotations

import numpy as np
import pytest

import dlrun as dl
from dlrun import ops
from dlrun.engine.core.graph import Placeholder
from dlrun.engine.layers import LAYERS, layer_from_config
from dlrun.engine.core.plan import Plan
from dlrun.errors import ConfigError, ShapeError
from dlrun.ops import Spec

L = dl.layers
TOL = dict(rtol=1e-5, atol=1e-5)


def run(layer, x, training=False):
    """The layer's output for a batch ``x`` (building it first), through a real plan."""
    xp = Placeholder(Spec(x.shape, x.dtype))
    layer.ensure_built(x.shape[1:])
    out = layer.call(xp, training)
    plan = Plan([xp], [out], layer.weights)
    plan.feed[xp][...] = x
    plan.run()
    return plan.value(out).copy()


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


# -- Conv2D ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel,strides,padding", [
    (3, 1, "valid"), (3, 1, "same"), ((2, 3), (2, 1), "same"), (3, 2, "valid"), (4, 3, "same")])
def test_conv2d_matches_direct_convolution(kernel, strides, padding):
    dl.set_seed(0)
    layer = L.Conv2D(4, kernel, strides=strides, padding=padding)
    x = images(2, 3, 7, 8)
    y = run(layer, x)
    w, b = layer.get_weights()
    b = b + np.random.default_rng(1).standard_normal(b.shape).astype(np.float32)
    layer.set_weights([w, b])
    y = run(layer, x)
    want = conv_ref(x, w, b, layer.strides, padding)
    np.testing.assert_allclose(y, want, **TOL)
    assert y.shape[1:] == layer.compute_output_shape(x.shape[1:])


@pytest.mark.parametrize("activation,use_bias", [("relu", True), ("tanh", True),
                                                 ("relu", False), (None, False)])
def test_conv2d_activation_and_bias_variants(activation, use_bias):
    dl.set_seed(0)
    layer = L.Conv2D(3, 2, padding="same", activation=activation, use_bias=use_bias)
    x = images(2, 2, 5, 4)
    run(layer, x)
    ws = layer.get_weights()
    b = np.random.default_rng(4).standard_normal(3).astype(np.float32) if use_bias else 0.0
    layer.set_weights([ws[0], b] if use_bias else ws)
    z = conv_ref(x, ws[0], b, (1, 1), "same")
    want = {"relu": np.maximum(z, 0), "tanh": np.tanh(z), None: z}[activation]
    np.testing.assert_allclose(run(layer, x), want, **TOL)


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


def test_conv1x1_equals_dense_on_the_channel_axis():
    dl.set_seed(0)
    conv = L.Conv2D(5, 1)
    x = images(3, 4, 6, 7)
    run(conv, x)
    w, b = conv.get_weights()
    dense = L.Dense(5)
    dense.ensure_built((4,))
    dense.set_weights([w[:, :, 0, 0].T, b])
    flat = x.transpose(0, 2, 3, 1).reshape(-1, 4)          # every pixel a sample
    want = run(dense, flat).reshape(3, 6, 7, 5).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(run(conv, x), want, **TOL)


def test_conv2d_errors_name_the_problem():
    with pytest.raises(ConfigError, match="padding"):
        L.Conv2D(4, 3, padding="full")
    with pytest.raises(ConfigError, match="kernel_size"):
        L.Conv2D(4, 0)
    with pytest.raises(ShapeError, match="does not fit"):
        L.Conv2D(4, 5).compute_output_shape((1, 3, 3))
    with pytest.raises(ShapeError, match="images"):
        run(L.Conv2D(4, 3), images(2, 10))


# -- pooling -----------------------------------------------------------------------------
@pytest.mark.parametrize("pool,strides,padding", [(2, None, "valid"), (2, 1, "valid"),
                                                  (2, 2, "same"), (3, 2, "valid"),
                                                  (3, 2, "same"), ((2, 3), 1, "same")])
def test_pooling_matches_reference(pool, strides, padding):
    x = images(2, 3, 7, 6)
    for cls, fn in ((L.MaxPooling2D, np.nanmax), (L.AveragePooling2D, np.nanmean)):
        layer = cls(pool, strides=strides, padding=padding)
        y = run(layer, x)
        want = pool_ref(x, layer.pool_size, layer.strides, padding, fn)
        np.testing.assert_allclose(y, want, **TOL)
        assert y.shape[1:] == layer.compute_output_shape(x.shape[1:])
    # the recorded argmax too (a 2x2 window inside the image takes an unrolled kernel)
    op = ops.get("max_pool2d")
    args = (layer.pool_size, layer.strides, padding)
    want_y, want_at = op.reference(x, *args)
    y, at = np.zeros(want_y.shape, x.dtype), np.zeros(want_at.shape, np.int64)
    op.forward(x, *args, y, at)
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


def test_global_average_pooling_and_reshape():
    x = images(2, 3, 4, 5)
    np.testing.assert_allclose(run(L.GlobalAveragePooling2D(), x), x.mean(axis=(2, 3)), **TOL)
    r = L.Reshape((5, -1))
    np.testing.assert_array_equal(run(r, x), x.reshape(2, 5, 12))
    assert r.compute_output_shape((3, 4, 5)) == (5, 12)
    with pytest.raises(ShapeError, match="cannot reshape"):
        L.Reshape((7, -1)).compute_output_shape((3, 4, 5))


# -- BatchNormalization --------------------------------------------------------------------
@pytest.mark.parametrize("shape,axes", [((6, 4), (0,)), ((5, 3, 2, 4), (0, 2, 3))])
def test_batch_norm_training_and_inference(shape, axes):
    x = images(*shape) * 3.0 + 1.0
    bn = L.BatchNormalization(momentum=0.9, epsilon=1e-3)
    bn.ensure_built(x.shape[1:])
    c = shape[1]
    rng = np.random.default_rng(2)
    gamma, beta = rng.uniform(0.5, 2, c), rng.standard_normal(c)
    mm, mv = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    bn.set_weights([gamma, beta, mm, mv])
    bshape = (1, c) + (1,) * (len(shape) - 2)

    def b(v):
        return v.reshape(bshape)
    y = run(bn, x, training=True)
    mean, var = x.mean(axis=axes), x.var(axis=axes)
    np.testing.assert_allclose(y, b(gamma) * (x - b(mean)) / np.sqrt(b(var) + 1e-3) + b(beta),
                               **TOL)
    _, _, mm2, mv2 = bn.get_weights()                       # updated in place, as Keras does
    np.testing.assert_allclose(mm2, 0.9 * mm + 0.1 * mean, **TOL)
    np.testing.assert_allclose(mv2, 0.9 * mv + 0.1 * var, **TOL)

    want = b(gamma) * (x - b(mm2)) / np.sqrt(b(mv2) + 1e-3) + b(beta)
    np.testing.assert_allclose(run(bn, x, training=False), want, **TOL)
    bn.trainable = False                                    # frozen: inference mode
    np.testing.assert_allclose(run(bn, x, training=True), want, **TOL)
    assert [p.trainable for p in bn.weights] == [False] * 4
    bn.trainable = True
    assert [p.trainable for p in bn.weights] == [True, True, False, False]


# -- activation layers ---------------------------------------------------------------------
def test_activation_layers_match_numpy():
    x = images(4, 6)
    np.testing.assert_allclose(run(L.LeakyReLU(0.1), x), np.where(x > 0, x, 0.1 * x), **TOL)
    np.testing.assert_allclose(run(L.ELU(0.5), x), np.where(x > 0, x, 0.5 * np.expm1(x)),
                               **TOL)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(run(L.Softmax(), x), e / e.sum(axis=1, keepdims=True), **TOL)

    p = L.PReLU()
    np.testing.assert_allclose(run(p, x), np.maximum(x, 0), **TOL)   # alpha starts at 0
    alpha = np.random.default_rng(3).uniform(0, 1, (6,)).astype(np.float32)
    p.set_weights([alpha])
    np.testing.assert_allclose(run(p, x), np.where(x > 0, x, alpha * x), **TOL)


def test_maxout_is_the_max_over_pieces_of_a_dense():
    dl.set_seed(0)
    m = L.Maxout(3, pieces=4)
    x = images(5, 7)
    y = run(m, x)
    w, b = m.get_weights()
    z = x.astype(np.float64) @ w + b
    np.testing.assert_allclose(y, z.reshape(5, 3, 4).max(axis=2), **TOL)
    assert m.compute_output_shape((7,)) == (3,) and w.shape == (7, 12)


def test_prelu_and_maxout_learn():
    dl.set_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    t = np.abs(x[:, :2]) - 0.5 * x[:, 2:]                    # piecewise linear target
    model = dl.Sequential([L.Maxout(8, pieces=3, input_shape=(4,)), L.PReLU(), L.Dense(2)])
    model.compile(optimizer=dl.optimizers.Adam(0.01), loss="mse")
    h = model.fit(x, t, batch_size=16, epochs=30, verbose=0).history["loss"]
    assert h[-1] < 0.2 * h[0]


# -- configs, models ------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [
    L.Conv2D(4, (2, 3), strides=2, padding="same", activation="relu", use_bias=False,
             kernel_initializer="he_normal", kernel_regularizer=dl.regularizers.l2(0.01)),
    L.MaxPooling2D(3, strides=2, padding="same"), L.AveragePooling2D((2, 1)),
    L.GlobalAveragePooling2D(), L.Reshape((2, -1)), L.BatchNormalization(0.9, 1e-4),
    L.LeakyReLU(0.2), L.PReLU(), L.ELU(0.7), L.Softmax(), L.Maxout(3, 2)])
def test_get_config_round_trip(layer):
    name = type(layer).__name__
    assert LAYERS[name] is type(layer)
    again = layer_from_config(name, layer.get_config())
    assert again.get_config() == layer.get_config()


def test_small_cnn_trains_saves_and_loads(tmp_path):
    dl.set_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 1, 8, 8)).astype(np.float32)
    y = (x[:, 0, :4].mean(axis=(1, 2)) > x[:, 0, 4:].mean(axis=(1, 2))).astype(np.int64)
    model = dl.Sequential([
        L.Conv2D(4, 3, padding="same", activation="relu", input_shape=(1, 8, 8)),
        L.BatchNormalization(), L.MaxPooling2D(2), L.Conv2D(4, 3, strides=2),
        L.AveragePooling2D(1), L.Flatten(), L.Dense(2, activation="softmax")])
    model.compile(optimizer=dl.optimizers.SGD(lr=0.05, momentum=0.9),
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


def test_frozen_batch_norm_keeps_all_its_weights_during_fit():
    dl.set_seed(0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((16, 2, 4, 4)).astype(np.float32) * 2 + 1
    y = rng.integers(0, 2, 16)
    bn = L.BatchNormalization()
    model = dl.Sequential([L.Conv2D(3, 3, input_shape=(2, 4, 4)), bn, L.Flatten(),
                           L.Dense(2, activation="softmax")])
    bn.trainable = False
    model.compile(optimizer=dl.optimizers.SGD(lr=0.1), loss="sparse_categorical_crossentropy")
    before = bn.get_weights()
    conv_before = model.layers[0].get_weights()[0]
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    for a, b in zip(bn.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(model.layers[0].get_weights()[0], conv_before)


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
