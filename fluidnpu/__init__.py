"""fluidnpu: Fluid Batching NPU generator and serving co-simulator."""
__version__ = "0.1.0"
