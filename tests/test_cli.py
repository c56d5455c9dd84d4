"""The console script: every subcommand answers --help with a real example, one flag vocabulary,
old spellings accepted with a warning, and main() returns exit codes."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import cli.main as cli

REPO = Path(__file__).resolve().parents[1]


def test_top_level_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_subcommand_has_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([name, "--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_runtime_cli_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys; import cli.main as c; c.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------------------- help epilogs


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]  # type: ignore[no-any-return]


def _examples(name: str) -> list[list[str]]:
    """The example command lines of ``name``'s epilog, as argv lists (continuations joined)."""
    epilog = _subparser(name).epilog or ""
    lines = epilog.split("deprecated spellings")[0].replace("\\\n", " ").splitlines()
    return [shlex.split(line.split(" > ")[0]) for line in lines if line.strip().startswith("rt-decoder ")]


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_subcommand_help_ends_with_a_real_example(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main([name, "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and f"\n  rt-decoder {name}" in out
    examples = _examples(name)
    assert any(argv[1] == name for argv in examples)
    parser = cli.build_parser()
    for argv in examples:  # each parses (flags and values exist), without a deprecation warning
        args = parser.parse_args(cli._rewrite(argv[1:]))
        assert args.command == argv[1]
        assert "deprecated" not in capsys.readouterr().err


# ---------------------------------------------------------------------------- one vocabulary


def _parse(argv: list[str]) -> argparse.Namespace:
    return cli.build_parser().parse_args(cli._rewrite(argv))


# (argv in the new spelling, the attributes it sets)
NEW = [
    (["rig", "--bind", "tcp://127.0.0.1:5555", "--fs", "60", "--frames", "9", "--allow-non-loopback",
      "--summary-json", "r.json"], {"fs": 60.0, "frames": 9, "allow_non_loopback": True, "summary_json": "r.json",
                                    "bind": "tcp://127.0.0.1:5555", "connect": None}),
    (["listen", "--connect", "tcp://127.0.0.1:5555", "--allow-non-loopback", "--summary-json", "l.json",
      "--frames", "3"], {"allow_non_loopback": True, "summary_json": "l.json", "frames": 3}),
    (["demo", "--fs", "20", "--frames", "30", "--model", "m"], {"fs": 20.0, "frames": 30, "model": "m"}),
    (["replay", "s.h5", "--connect", "tcp://127.0.0.1:5555", "--frames", "7", "--fs", "30"],
     {"connect": "tcp://127.0.0.1:5555", "bind": None, "frames": 7, "fs": 30.0}),
    (["replay", "s.h5", "--bind", "tcp://127.0.0.1:5555"], {"connect": None, "bind": "tcp://127.0.0.1:5555"}),
    (["replay", "s.h5"], {"connect": None, "bind": None}),
    (["suite2p-live", "p", "--raw-frames", "replay", "--bind", "tcp://127.0.0.1:5", "--fs", "30", "--frames", "4",
      "--raw-frames-bind", "--allow-non-loopback"],
     {"raw_frames": "replay", "bind": "tcp://127.0.0.1:5", "fs": 30.0, "frames": "4", "raw_frames_bind": True,
      "allow_non_loopback": True}),
    (["deconvolve", "x.npy", "--fs", "30", "--out", "o.npy", "--calcium-model", "ar1"],
     {"calcium_model": "ar1", "fs": 30.0}),
    (["train", "--data", "d", "--out", "o", "--no-progress"], {"no_progress": True}),
    (["simulate", "--out", "o", "--frames", "30", "--no-progress", "--overwrite"],
     {"frames": 30, "no_progress": True, "overwrite": True}),
    (["reconstruct", "--model", "m", "--data", "d", "--out", "o", "--no-progress"], {"model": "m", "no_progress": True}),
]


@pytest.mark.parametrize(("argv", "expected"), NEW, ids=[" ".join(a[:1] + a[2:4]) for a, _ in NEW])
def test_the_new_spellings_parse_without_warnings(argv: list[str], expected: dict[str, object],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(argv)
    assert {k: getattr(args, k) for k in expected} == expected
    assert capsys.readouterr().err == ""


# (argv with an old spelling, the attributes it must set, the old and new names in the warning)
OLD = [
    (["rig", "--bind", "tcp://127.0.0.1:5555", "--rate-hz", "60"], {"fs": 60.0}, "--rate-hz", "--fs"),
    (["rig", "--bind", "tcp://127.0.0.1:5555", "--allow-remote"], {"allow_non_loopback": True},
     "--allow-remote", "--allow-non-loopback"),
    (["rig", "--bind", "tcp://127.0.0.1:5555", "--json-out", "r.json"], {"summary_json": "r.json"},
     "--json-out", "--summary-json"),
    (["listen", "--connect", "tcp://127.0.0.1:5555", "--allow-remote"], {"allow_non_loopback": True},
     "--allow-remote", "--allow-non-loopback"),
    (["listen", "--connect", "tcp://127.0.0.1:5555", "--json-out", "l.json"], {"summary_json": "l.json"},
     "--json-out", "--summary-json"),
    (["demo", "--rate-hz", "20"], {"fs": 20.0}, "--rate-hz", "--fs"),
    (["replay", "s.h5", "--max-frames", "7"], {"frames": 7}, "--max-frames", "--frames"),
    (["replay", "s.h5", "--to", "tcp://127.0.0.1:6000"], {"bind": "tcp://127.0.0.1:6000", "connect": None},
     "--to ADDR", "--bind ADDR"),
    (["replay", "--to", "tcp://127.0.0.1:6000", "--connect", "s.h5"],
     {"connect": "tcp://127.0.0.1:6000", "bind": None, "source": "s.h5"}, "--to ADDR --connect", "--connect ADDR"),
    (["replay", "s.h5", "--connect", "--to=tcp://127.0.0.1:6000", "--speed", "0"],
     {"connect": "tcp://127.0.0.1:6000", "speed": 0.0}, "--to ADDR --connect", "--connect ADDR"),
    (["replay", "s.h5", "--connect"], {"connect": "tcp://127.0.0.1:5555", "source": "s.h5"},
     "--connect without an address", "--connect ADDR"),
    (["suite2p-live", "p", "--raw-frames", "replay", "--to", "tcp://127.0.0.1:5", "--connect"],
     {"connect": "tcp://127.0.0.1:5", "bind": None}, "--to ADDR --connect", "--connect ADDR"),
    (["suite2p-live", "p", "--raw-frames", "replay", "--bind", "tcp://127.0.0.1:5", "--allow-remote"],
     {"allow_non_loopback": True}, "--allow-remote", "--allow-non-loopback"),
    (["suite2p-live", "p", "--raw-frames", "replay", "--bind", "tcp://127.0.0.1:5", "--rate-hz", "30"],
     {"fs": 30.0}, "--rate-hz", "--fs"),
    (["suite2p-live", "p", "--raw-frames", "replay", "--bind", "tcp://127.0.0.1:5", "--max-frames", "4"],
     {"frames": 4}, "--max-frames", "--frames"),
    (["suite2p-live", "p", "--raw-frames", "tcp://127.0.0.1:6", "--bind", "tcp://127.0.0.1:5", "--frames-bind"],
     {"raw_frames_bind": True}, "--frames-bind", "--raw-frames-bind"),
    (["deconvolve", "x.npy", "--out", "o.npy", "--model", "ar2"], {"calcium_model": "ar2"},
     "--model", "--calcium-model"),
]


@pytest.mark.parametrize(("argv", "expected", "old", "new"), OLD, ids=[f"{a[0]} {o}" for a, _, o, _n in OLD])
def test_each_deprecated_spelling_still_works_and_warns(argv: list[str], expected: dict[str, object], old: str,
                                                        new: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(argv)
    assert {k: getattr(args, k) for k in expected} == expected
    err = capsys.readouterr().err
    assert err.startswith(f"rt-decoder {argv[0]}: warning: {old} is deprecated, use {new}")
    assert len(err.strip().splitlines()) == 1


def test_suite2p_live_frames_as_a_source_is_the_old_raw_frames(capsys: pytest.CaptureFixture[str]) -> None:
    from cli.commands.suite2p_live import resolve_frames
    from rt_decoder.errors import ConfigError

    assert resolve_frames("replay", "40") == ("replay", 40)
    assert capsys.readouterr().err == ""
    assert resolve_frames(None, "frames.tif") == ("frames.tif", None)  # the old meaning, with a warning
    assert capsys.readouterr().err.strip() == ("rt-decoder suite2p-live: warning: --frames SOURCE is deprecated, "
                                               "use --raw-frames SOURCE (--frames N is now a number of frames)")
    with pytest.raises(ConfigError, match="--frames takes a number of frames"):
        resolve_frames("replay", "frames.tif")
    with pytest.raises(ConfigError, match="--raw-frames SOURCE is required"):
        resolve_frames(None, "5")
    with pytest.raises(ConfigError, match="--frames must be >= 1"):
        resolve_frames("replay", "0")


def test_the_new_connect_with_an_address_is_left_alone() -> None:
    from cli.flags import rewrite_to_connect

    argv = ["s.h5", "--connect", "tcp://127.0.0.1:5", "--speed", "0"]
    assert rewrite_to_connect("p", argv, default_address="tcp://127.0.0.1:1") == argv
    assert rewrite_to_connect("p", ["--", "--to", "x"]) == ["--", "--to", "x"]


def test_deprecated_flags_work_end_to_end_in_a_real_rig_process(tmp_path: Path) -> None:
    """``rig --rate-hz --json-out --allow-remote`` (old spellings) streams and writes its summary."""
    summary = tmp_path / "rig.json"
    proc = subprocess.run([sys.executable, "-m", "cli", "rig", "--bind", "tcp://127.0.0.1:*", "--neurons", "8",
                           "--frames", "5", "--rate-hz", "200", "--json-out", str(summary), "--allow-remote",
                           "--quiet", "--report-every-s", "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "is deprecated" in line]
    assert warnings == ["rt-decoder rig: warning: --rate-hz is deprecated, use --fs",
                        "rt-decoder rig: warning: --json-out is deprecated, use --summary-json",
                        "rt-decoder rig: warning: --allow-remote is deprecated, use --allow-non-loopback"]
    got = json.loads(summary.read_text())
    assert got["frames_sent"] == 5 and got["rate_hz"] == 200.0


def test_deconvolve_old_model_flag_gives_the_same_output_as_calcium_model(tmp_path: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    np.save(tmp_path / "f.npy", (rng.random((3, 120)) + 1.0).astype(np.float32))
    outs = []
    for flag in ("--calcium-model", "--model"):
        out = tmp_path / f"{flag.strip('-')}.npy"
        assert cli.main(["deconvolve", str(tmp_path / "f.npy"), "--fs", "30", "--out", str(out), flag, "ar1",
                         "--init-frames", "60"]) == 0
        outs.append(np.load(out))
    np.testing.assert_array_equal(outs[0], outs[1])
