"""modelzip: make trained neural networks small and fast while keeping their accuracy.

Example:
    >>> import modelzip as mz
    >>> data = mz.load_data("digits")
    >>> model = mz.load_model("zoo:lenet300", data=data)
    >>> result = mz.compress(model, data, "default", out="lenet.mzip")   # doctest: +SKIP
"""

from modelzip.api import compress, evaluate, load, load_data, load_model, save
from modelzip.config import MethodConfig
from modelzip.context import Context
from modelzip.errors import ModelzipError
from modelzip.recipe import Recipe
from modelzip.registry import register

__version__ = "0.1.0"

__all__ = [
    "Context",
    "MethodConfig",
    "ModelzipError",
    "Recipe",
    "compress",
    "evaluate",
    "load",
    "load_data",
    "load_model",
    "register",
    "save",
]
