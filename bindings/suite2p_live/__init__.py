"""Suite2p-live: register and extract raw two-photon frames with a Suite2p seeding run.

Suite2p has no live mode. Given a plane folder from a short seeding run, this package
registers each new raw frame to the run's reference image (rigid phase correlation, as
suite2p's rigid step), extracts ROI fluorescence F (lam-weighted) and neuropil Fneu with
Suite2p's own masks, and publishes F - c * Fneu (c = 0.7 by default) in wire protocol v1.

    from bindings.suite2p_live import load_suite2p_plane, Suite2pLiveExtractor, LiveSettings
    plane = load_suite2p_plane("suite2p/plane0")
    extract = Suite2pLiveExtractor(plane, LiveSettings(neuropil_coefficient=0.7))
    out = extract(raw_frame, frame_index, acq_ns)     # out.F, out.Fneu, out.values, out.dy, out.dx

CLI: ``rt-decoder suite2p-live SUITE2P_DIR --raw-frames SOURCE --bind ADDR``. The stage imports
numpy, scipy and numba; sources and the CLI import zmq / tifffile lazily.
"""

from bindings.suite2p_live.extractor import LiveFrame, LiveSettings, Suite2pLiveExtractor
from bindings.suite2p_live.live import LiveStats, run_live
from bindings.suite2p_live.plane import Suite2pPlane, load_suite2p_plane
from bindings.suite2p_live.sources import (
    BinaryReplaySource,
    RawFrameItem,
    TiffFollowSource,
    ZmqRawFrameSource,
    open_source,
)

__all__ = [
    "BinaryReplaySource",
    "LiveFrame",
    "LiveSettings",
    "LiveStats",
    "RawFrameItem",
    "Suite2pLiveExtractor",
    "Suite2pPlane",
    "TiffFollowSource",
    "ZmqRawFrameSource",
    "load_suite2p_plane",
    "open_source",
    "run_live",
]
