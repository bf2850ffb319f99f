"""Write ``data/torch_refs.npz``: PyTorch's outputs and gradients for Embedding, GRU and a
Linear applied to every step (what ``TimeDistributed(Dense)`` computes), in float64, with
the inputs and the weights in PyTorch's own layouts. ``test_against_torch.py`` maps the
weights into dlrun's layouts and compares.

PyTorch is not a dependency of dlrun or of its tests (it is large); run this with a Python
that has it, and commit the fixture (a few KB)::

    python tests/engine/layers/make_torch_refs.py

Every case uses the loss ``sum(y * c)`` with ``c`` random (saved as ``<case>_c``), and
saves ``<case>_d<name>``, the gradient of each input and weight.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).parent / "data" / "torch_refs.npz"


def run(case: str, module: torch.nn.Module, x: torch.Tensor, out: dict, rng) -> None:
    """y = module(x), the loss sum(y * c) differentiated; inputs, weights, y, c and every
    gradient into ``out`` under ``<case>_<name>``."""
    module.double()
    if x.is_floating_point():
        x.requires_grad_(True)
    y = module(x)
    y = y[0] if isinstance(y, tuple) else y                  # nn.GRU: (outputs, last h)
    c = torch.from_numpy(rng.standard_normal(tuple(y.shape)))
    (y * c).sum().backward()
    out[f"{case}_x"] = x.detach().numpy()
    out[f"{case}_y"] = y.detach().numpy()
    out[f"{case}_c"] = c.numpy()
    if x.is_floating_point():
        out[f"{case}_dx"] = x.grad.numpy()
    for name, p in module.named_parameters():
        out[f"{case}_{name}"] = p.detach().numpy()
        out[f"{case}_d{name}"] = p.grad.numpy()


def main() -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    out: dict = {}
    # indices with repeats (the scatter-add must add twice), every row of 7 but row 6 used
    idx = torch.tensor([[1, 4, 4, 0, 2], [5, 1, 3, 4, 1]])
    run("embedding", torch.nn.Embedding(7, 3), idx, out, rng)
    x = torch.from_numpy(rng.standard_normal((2, 5, 3)))
    run("gru", torch.nn.GRU(3, 4, batch_first=True), x, out, rng)
    x = torch.from_numpy(rng.standard_normal((2, 4, 3)))
    run("linear", torch.nn.Linear(3, 2), x, out, rng)          # acts on the last axis
    OUT.parent.mkdir(exist_ok=True)
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {', '.join(sorted(out))}")


if __name__ == "__main__":
    main()
