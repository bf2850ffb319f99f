"""Keras' ``keras.layers.recurrent``: the same classes as :mod:`dlrun.layers`."""
from dlrun.engine.layers.recurrent import GRU, LSTM, SimpleRNN

__all__ = ["GRU", "LSTM", "SimpleRNN"]
