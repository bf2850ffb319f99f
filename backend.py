"""Keras' backend, ``from dlrun import backend as K``: functions of symbolic tensors for
a loss function or a ``Lambda`` layer, each a graph op with CPU and CUDA kernels::

    from dlrun import backend as K

    def my_mse(y_true, y_pred):
        return K.mean(K.square(y_pred - y_true), axis=-1)

    model.compile(optimizer="sgd", loss=my_mse)
"""
# (abs, max, min, pow, sum shadow builtins here on purpose: they are Keras' K. names)
from dlrun.engine.functions import (abs, add, clip, divide, dot, epsilon, exp, log, max,
                                    maximum, mean, min, minimum, multiply, negative, pow,
                                    relu, reshape, sigmoid, softmax, sqrt, square, subtract,
                                    sum, tanh)

__all__ = ["abs", "add", "clip", "divide", "dot", "epsilon", "exp", "log", "max", "maximum",
           "mean", "min", "minimum", "multiply", "negative", "pow", "relu", "reshape",
           "sigmoid", "softmax", "sqrt", "square", "subtract", "sum", "tanh"]
