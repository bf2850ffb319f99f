"""Transitional: the planner's old entry to the fused ``bias_add`` + activation kernel.

The fused kernels are now twins made from each elementwise op's own formula, for any
one-input elementwise op: :func:`dlrun.ops.fused_bias_forward` (``kernel(x, b,
*attr_values, z, y)``). This module keeps ``engine/core/plan.py``'s call working until it
uses that; then it goes.
"""
from __future__ import annotations

from dlrun.ops.elementwise import fused_bias_forward
from dlrun.ops.registry import get

# activation op name -> what bias_act_fwd_cuda takes as ``kind`` (the name itself)
ACTIVATIONS = {name: name for name in ("relu", "sigmoid", "tanh", "leaky_relu", "elu")}


def bias_act_fwd_cuda(x, b, kind, alpha, z, y):
    """z = x + b ; y = act(z), by the twin ``bias_add+<kind>`` (alpha: the op's attribute,
    ignored by ops without one)."""
    op = get(kind)
    fused_bias_forward(op).cuda(x, b, *([alpha] if op.attrs else []), z, y)
