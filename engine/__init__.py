"""The graph engine and the Keras surface built on it.

- ``core/``: symbolic tensors and the graph, the planner and executor, the rewrites, the
  device backends;
- ``layers/``: the layers, one module per family;
- ``models/``: Model, Sequential, functional models, the one training loop, saving,
  checkpoints and the zoo;
- beside them: losses, optimizers, schedules, metrics, callbacks, regularizers,
  initializers and seeds.

Nothing is imported here, so importing one part never pulls in the others.
"""
