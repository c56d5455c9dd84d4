"""``rt-decoder recover``: repair a session recording whose writer was killed.

A recording (the service's ``[recording]``, ``rig --record``) whose writer was killed
between two flushes is already a closed HDF5 file: plain ``h5py.File(path, "r")`` opens
it. One killed inside a flush (about 1 ms in every ``flush_every_s``) keeps HDF5's "file
is open for write" flags, which plain h5py refuses. ``recover`` clears them, drops the
half-written block, and marks the file recovered so ``deconvolve``, ``replay`` and
``to-nwb`` accept it without ``--allow-incomplete`` (``rt_decoder.io.session_file.
recover_session``). In place; ``--out`` repairs a copy instead. Refused while the file's
writer is still running.
"""

from __future__ import annotations

import argparse

HELP = "repair a recording (.h5) whose writer was killed, so any HDF5 reader opens it"

EPILOG = """examples:
  rt-decoder recover recordings/session-1.h5
  rt-decoder recover recordings/session-1.h5 --out repaired.h5 --summary-json recover.json
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recording", nargs="+", metavar="FILE", help="session file(s) to repair, in place")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="write the repaired copy here and leave FILE untouched (one FILE only)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--summary-json", default=None, metavar="PATH", help="write what was done as JSON here")


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    import shutil
    import sys
    from pathlib import Path

    from rt_decoder.errors import ConfigError, DataFormatError
    from rt_decoder.io.safe import check_target
    from rt_decoder.io.session_file import recover_session, writer_is_alive

    files = [Path(p) for p in args.recording]
    if args.out is not None:
        if len(files) != 1:
            raise ConfigError(f"--out takes one FILE, got {len(files)}")
        if not files[0].is_file():
            raise DataFormatError(f"{files[0]}: no such session file")
        if writer_is_alive(files[0]):
            raise DataFormatError(f"{files[0]}: another process has the file open (a writer still recording, "
                                  "or a reader): stop it first")
        check_target(args.out, overwrite=args.overwrite, kind="file")
        tmp = Path(args.out).with_name(f".{Path(args.out).name}.incomplete-recover")
        shutil.copyfile(files[0], tmp)
        try:
            report = recover_session(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(args.out)
        reports = [dataclasses.replace(report, path=Path(args.out))]
    else:
        reports = []
        for path in files:
            reports.append(recover_session(path))
    for r in reports:
        if r.was_complete and not r.changed:
            what = "closed cleanly by its writer: nothing to repair"
        else:
            done = []
            if r.flags_cleared:
                done.append("cleared the HDF5 'open for write' flags")
            if r.frames_trimmed or r.decoded_trimmed:
                done.append(f"dropped a half-written block ({r.frames_trimmed} frames, {r.decoded_trimmed} decoded)")
            if r.padded_bytes:
                done.append(f"padded {r.padded_bytes} bytes to the recorded end of file")
            what = ("; ".join(done) or "already readable") + "; marked recovered"
        print(f"{r.path}: {r.frames} frames, {r.decoded} decoded frames; {what}", file=sys.stderr)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(
            [{**dataclasses.asdict(r), "path": str(r.path)} for r in reports],
            indent=1))
    return 0
