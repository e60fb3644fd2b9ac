"""slotrun: a plugin-based PyTorch framework for object-centric learning."""

from importlib.metadata import PackageNotFoundError, version

from slotrun.hookspecs import hookimpl

try:
    __version__ = version("slotrun")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = ["__version__", "hookimpl"]
