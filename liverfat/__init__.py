"""liverfat: a benchmark suite for liver-fat and hepatic-steatosis methods on body MRI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("liverfat")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

__all__ = ["__version__"]
