"""File formats: Sensorium-layout datasets and recorded-session HDF5 files (no zmq, no torch)."""
