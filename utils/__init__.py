"""Keras' ``keras.utils``: ``from dlrun.utils import to_categorical`` (or, as Keras 1
lectures write it, ``from dlrun.utils import np_utils`` then ``np_utils.to_categorical``)."""
from dlrun.engine.custom_objects import custom_object_scope, get_custom_objects
from dlrun.utils import np_utils
from dlrun.utils.np_utils import normalize, to_categorical

__all__ = ["custom_object_scope", "get_custom_objects", "normalize", "np_utils",
           "to_categorical"]
