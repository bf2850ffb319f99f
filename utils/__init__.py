"""Keras' ``keras.utils``: ``from dlrun.utils import to_categorical`` (or, as Keras 1
lectures write it, ``from dlrun.utils import np_utils`` then ``np_utils.to_categorical``)."""
from dlrun.utils import np_utils
from dlrun.utils.np_utils import normalize, to_categorical

__all__ = ["normalize", "np_utils", "to_categorical"]
