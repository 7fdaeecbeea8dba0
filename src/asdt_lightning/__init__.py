"""ASDT (alternate self-dual teaching) for weakly supervised semantic segmentation."""

from . import config as _config  # noqa: F401  (registers the asdt.* OmegaConf resolvers the configs use)

__version__ = "0.1.0"
