"""Keras' ``keras.callbacks``: ``from dlrun.callbacks import EarlyStopping``."""
from dlrun.engine.callbacks import (BackupAndRestore, Callback, CSVLogger, EarlyStopping,
                                    History, LearningRateScheduler, ModelCheckpoint,
                                    ProgressBar, ReduceLROnPlateau, TerminateOnNaN)

__all__ = ["BackupAndRestore", "CSVLogger", "Callback", "EarlyStopping", "History",
           "LearningRateScheduler", "ModelCheckpoint", "ProgressBar", "ReduceLROnPlateau",
           "TerminateOnNaN"]
