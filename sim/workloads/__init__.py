"""Early-exit workloads: model descriptions, topology files, the model zoo."""
from .model import GemmLayer, ExitHead, EEModel

__all__ = ["GemmLayer", "ExitHead", "EEModel"]
