"""slotrun: a plugin-based PyTorch framework for object-centric learning."""

from importlib.metadata import PackageNotFoundError, version

from slotrun.api import build_from_recipe, load_recipe, load_run
from slotrun.hookspecs import hookimpl
from slotrun.plugins import load_plugins
from slotrun.types import Batch, DecoderOutput, Features, ImageSpec, ModelOutput, Slots

try:
    __version__ = version("slotrun")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "Batch", "DecoderOutput", "Features", "ImageSpec", "ModelOutput", "Slots", "__version__",
    "build_from_recipe", "hookimpl", "load_plugins", "load_recipe", "load_run",
]
