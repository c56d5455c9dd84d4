"""rt-decoder: real-time movie decoding from live two-photon ROI streams."""

__version__ = "0.1.0"
