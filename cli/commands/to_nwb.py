"""``rt-decoder to-nwb``: convert a recorded service session (``[recording]``) to an NWB file.

The recording (``rt_decoder.io.session_file``) is read and checked first: one whose
writer was killed (not closed) is refused unless ``--allow-incomplete``. ``--out`` is
refused if it exists (unless ``--overwrite``) and written under a temporary name, renamed
when complete. What goes into the file: ``rt_decoder.io.nwb.write_session_nwb``.
"""

from __future__ import annotations

import argparse

HELP = "convert a recorded session (.h5: received and decoded frames) to an NWB file (needs pynwb)"

EPILOG = """examples:
  rt-decoder to-nwb recording.h5 --out recording.nwb
  rt-decoder to-nwb recording.h5 --out recording.nwb --model rt_decoder/models/demo --config serve.toml --overwrite
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recording", help="session file written by the service's [recording] (or rig --record)")
    p.add_argument("--out", required=True, help="NWB file to write (.nwb)")
    p.add_argument("--model", default=None, metavar="DIR",
                   help="the model folder that decoded the session (recorded in the file's metadata)")
    p.add_argument("--config", default=None, metavar="TOML",
                   help="the service's config file (its text is recorded in the file's metadata)")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="convert a recording whose writer was killed (the frames flushed before)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from rt_decoder.errors import ConfigError
    from rt_decoder.io.nwb import model_summary, require_pynwb, write_session_nwb
    from rt_decoder.io.inputs import read_complete_session
    from rt_decoder.io.safe import check_target

    if Path(args.out).suffix != ".nwb":
        raise ConfigError(f"--out must name a .nwb file, got {args.out}")
    check_target(args.out, overwrite=args.overwrite, kind="file")
    require_pynwb()
    session = read_complete_session(args.recording, args.allow_incomplete)
    settings = {}
    if args.config:
        try:
            settings["serve_toml"] = Path(args.config).read_text()
        except OSError as exc:
            raise ConfigError(f"--config {args.config}: cannot be read ({exc})") from None
    if args.model:
        from rt_decoder.encoder.manifest import load_model

        load_model(args.model)  # a real model folder, or a ModelError naming what is wrong
    write_session_nwb(args.out, session, model_dir=args.model, settings=settings, overwrite=args.overwrite)
    n_dec = 0 if session.decoded is None else session.decoded.shape[0]
    print(f"wrote {args.out}: {session.n_frames} received and {n_dec} decoded frames of session "
          f"{session.info.session_id!r}{'' if model_summary(args.model) is None else ' (model recorded)'}",
          file=sys.stderr)
    return 0

