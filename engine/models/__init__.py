"""Models: Model and Sequential (``model``), functional models (``functional``), saving and
loading (``saving``), training checkpoints (``checkpoints``) and the model zoo (``zoo``)."""
