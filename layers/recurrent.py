"""Keras' ``keras.layers.recurrent``: the same classes as :mod:`dlrun.layers`."""
from dlrun.engine.layers.recurrent import LSTM, SimpleRNN

__all__ = ["LSTM", "SimpleRNN"]
