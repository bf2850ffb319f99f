"""Ops: the contract, the registry, every built-in op's kernels, and ``gradcheck``.

Importing this package registers the built-in ops and twins. Users add an elementwise op
as a scalar formula and its derivative (``@dlrun.ops.elementwise(name)``, see
:mod:`dlrun.ops.elementwise`), any other op with ``dlrun.ops.register(dlrun.ops.Op(...))``
(the contract is in :mod:`dlrun.ops.registry`).
"""
from dlrun.ops.registry import (Op, OpError, Spec, Twin, get, get_twin, names, register,
                                register_twin, same_shape, twin_names, unregister)
from dlrun.ops.elementwise import Elementwise, elementwise, fused_bias_forward
from dlrun.ops import activations, dropout, linear, losses, reduce, shape  # noqa: F401
from dlrun.ops import arith, augment, regularizers  # noqa: F401
from dlrun.ops import axes, keras_losses, pointwise  # noqa: F401
from dlrun.ops import conv, norm, pool  # noqa: F401
from dlrun.ops import adaptive_pool, stochastic_pool  # noqa: F401
from dlrun.ops import gru, recurrent, sequence  # noqa: F401
from dlrun.ops import counts, updates  # noqa: F401
from dlrun.ops.gradcheck import GradcheckError, gradcheck

__all__ = ["Op", "OpError", "Spec", "get", "names", "register", "unregister", "same_shape",
           "Twin", "get_twin", "register_twin", "twin_names",
           "Elementwise", "elementwise", "fused_bias_forward", "gradcheck", "GradcheckError"]
