"""Batch normalisation of features (2-D input) or channels (NCHW images)."""
from __future__ import annotations

from dlrun.engine.core.graph import apply
from dlrun.engine.layers.base import FORWARD_ONLY, Layer
from dlrun.errors import ConfigError, ShapeError


class BatchNormalization(Layer):
    """Normalise each feature (2-D input) or channel (NCHW input) by the batch statistics
    while training, by moving averages of them at inference; then scale by ``gamma`` and
    shift by ``beta``. Weights: gamma, beta, moving_mean, moving_variance (the last two
    never trained: the training forward updates them, ``moving = momentum * moving +
    (1 - momentum) * batch statistic``). A frozen layer (``trainable=False``) runs in
    inference mode, as in Keras. In ``predict(x, training=True)`` it normalises by the
    batch statistics, as Keras' ``model(x, training=True)`` does, but leaves the moving
    statistics as they are (it runs with momentum 1: ``moving = 1 * moving + 0 *
    statistic``, exactly ``moving``)."""

    def __init__(self, momentum: float = 0.99, epsilon: float = 1e-3, **kw):
        super().__init__(**kw)
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        if not 0.0 <= self.momentum <= 1.0 or self.epsilon <= 0.0:
            raise ConfigError(f"BatchNormalization needs 0 <= momentum <= 1 and epsilon > 0, "
                              f"got momentum={momentum!r}, epsilon={epsilon!r}")

    def build(self, input_shape):
        if len(input_shape) not in (1, 3):
            raise ShapeError(f"BatchNormalization layer {self.name!r} expects (batch, "
                             f"features) or (batch, channels, height, width), got "
                             f"(batch, {', '.join(map(str, input_shape))})")
        c = (input_shape[0],)
        self.gamma = self.add_weight("gamma", c, "ones")
        self.beta = self.add_weight("beta", c, "zeros")
        self.moving_mean = self.add_weight("moving_mean", c, "zeros", trainable=False)
        self.moving_variance = self.add_weight("moving_variance", c, "ones", trainable=False)

    @Layer.trainable.setter
    def trainable(self, value: bool) -> None:
        Layer.trainable.fset(self, value)
        for p in (getattr(self, "moving_mean", None), getattr(self, "moving_variance", None)):
            if p is not None:
                p.trainable = False       # statistics, never trained

    def call(self, x, training):
        state = (self.gamma, self.beta, self.moving_mean, self.moving_variance)
        if training and self.trainable:
            momentum = 1.0 if training is FORWARD_ONLY else self.momentum
            return apply("batch_norm", x, *state, momentum=momentum, epsilon=self.epsilon)
        return apply("batch_norm_inference", x, *state, epsilon=self.epsilon)

    def get_config(self):
        return super().get_config() | {"momentum": self.momentum, "epsilon": self.epsilon}
