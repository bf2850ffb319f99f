"""The graph engine's core: symbolic tensors and the graph (``graph``), autodiff, the
planner and executor (``plan``), the graph rewrites (``rewrites``) and the device backends
(``device``)."""
