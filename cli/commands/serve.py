"""``rt-decoder serve``: the live decoding service (see ``streaming.service``)."""

from __future__ import annotations

import argparse
import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rt_decoder.recon.process import ReconstructionProcess
    from rt_decoder.recon.stage import LiveStage
    from streaming.config import ServiceConfig

HELP = "run the live decoder: ZeroMQ fluorescence in, decoded movie frames out"

EPILOG = """examples:
  rt-decoder serve --print-default-config > serve.toml
  rt-decoder serve --config serve.toml --summary-json serve-summary.json --view
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE.toml", help="service configuration (TOML); default: all defaults")
    parser.add_argument("--print-default-config", action="store_true",
                        help="print every option with its default and meaning, then exit")
    parser.add_argument("--summary-json", metavar="FILE", help="write the JSON metrics summary here at exit "
                        "(overrides [status] summary_json)")
    parser.add_argument("--view", nargs="?", const="127.0.0.1:8050", metavar="HOST:PORT",
                        help="also serve the live viewer page (rt-decoder view) at HOST:PORT (default "
                        "127.0.0.1:8050; port 0 = any free port) and print its address")


def run(args: argparse.Namespace) -> int:
    from streaming.config import ServiceConfig, default_config_toml, load_config

    if args.print_default_config:
        print(default_config_toml())
        return 0
    config = load_config(args.config) if args.config else ServiceConfig()
    if args.summary_json:
        config = config.replace(status={"summary_json": args.summary_json})
    import sys

    from streaming.service import DecoderService

    # shorter GIL hand-over between the receiver, pipeline and writer threads (default 5 ms)
    sys.setswitchinterval(0.0005)
    viewer = None
    if args.view:
        from streaming.viewer import start_viewer_process

        viewer, url = start_viewer_process(config, args.view)
        print(f"rt-decoder serve: live viewer at {url}", flush=True)
    stage = None
    try:
        stage = build_stage(config)
        return DecoderService(config, stage).run()
    finally:
        from rt_decoder.recon.process import ReconstructionProcess

        if isinstance(stage, ReconstructionProcess):
            stage.close()
        if viewer is not None:
            viewer.terminate()
            try:
                viewer.wait(10)
            except subprocess.TimeoutExpired:
                viewer.kill()
                viewer.wait()


def build_stage(config: ServiceConfig) -> LiveStage | ReconstructionProcess | None:
    """The live reconstruction of ``config.reconstruction``, or None when it is disabled.

    With ``process = true`` (the default) the ``LiveStage`` is built and run in a child
    process at a lower CPU priority (``rt_decoder.recon.process``); the caller closes it.

    Raises ConfigError / BackendUnavailableError / ModelError at construction (no model
    directory, a backend that cannot run here or cannot run the cached-context path).
    """
    rs = config.reconstruction
    if not rs.enabled:
        return None
    from rt_decoder.recon.stage import LiveStage

    if rs.process:
        import dataclasses
        import functools
        import os

        from rt_decoder.recon.process import ReconstructionProcess

        # one core stays with the frame path: on a 2-core machine the encoder gets one thread
        # (two threads there made the frame path wait, and the reconstruction no faster)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        rs = dataclasses.replace(rs, threads=max(1, min(rs.threads, cores - 1)))
        return ReconstructionProcess(functools.partial(LiveStage, rs), nice=rs.process_nice, idle=rs.process_idle)
    return LiveStage(rs)
