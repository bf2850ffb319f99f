"""Ops: the contract, the registry, every built-in op's kernels, and ``gradcheck``.

Importing this package registers the built-in ops. Users add their own with
``dlrun.ops.register(dlrun.ops.Op(...))``; see :mod:`dlrun.ops.registry` for the contract.
"""
from dlrun.ops.registry import Op, OpError, Spec, get, names, register, same_shape, unregister
from dlrun.ops import activations, dropout, linear, losses, reduce, shape  # noqa: F401
from dlrun.ops import arith, augment, regularizers  # noqa: F401
from dlrun.ops import conv, norm, pool  # noqa: F401
from dlrun.ops import recurrent  # noqa: F401
from dlrun.ops.gradcheck import GradcheckError, gradcheck

__all__ = ["Op", "OpError", "Spec", "get", "names", "register", "unregister", "same_shape",
           "gradcheck", "GradcheckError"]
