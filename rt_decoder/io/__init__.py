"""File formats and file safety (no zmq, no torch).

- ``sensorium``: Sensorium-layout datasets (writer and loader);
- ``session_file``: recorded-session HDF5 files (SWMR, crash-tolerant);
- ``nwb``: decoded movies out as NWB (needs pynwb, the ``[nwb]`` extra);
- ``safe``: outputs refused without overwrite, written atomically, incomplete ones marked;
- ``inputs``: reading and checking user inputs (.npy, Suite2p folders, layouts).
"""
