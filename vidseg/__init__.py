"""vidseg: streaming video semantic segmentation over ZeroMQ stages."""

__version__ = "0.1.0"
