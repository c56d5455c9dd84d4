"""streaming.config: typed, validated TOML settings of `rt-decoder serve`."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import pytest

from rt_decoder.errors import ConfigError
from streaming.config import (
    ServiceConfig,
    config_from_dict,
    default_config_toml,
    load_config,
)
from streaming.transport import is_loopback_address  # the one address policy


def test_default_config_text_is_valid_toml_listing_every_option() -> None:
    text = default_config_toml()
    cfg = config_from_dict(tomllib.loads(text))
    assert cfg == ServiceConfig()
    for key in ("address", "max_message_bytes", "curve_secret_key_file", "heartbeat_every_s",
                "prometheus_port", "intake_queue_frames", "drain_timeout_s", "flush_every_s", "[deconv]"):
        assert key in text
    # every option line is preceded by a comment giving its meaning
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if " = " in line and not line.startswith("#"):
            assert lines[i - 1].startswith("# "), line


def test_load_config_from_file(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[input]\naddress = "tcp://127.0.0.1:7001"\nbind = true\n[pipeline]\nstop_after_s = 2\n')
    cfg = load_config(p)
    assert cfg.input.address == "tcp://127.0.0.1:7001" and cfg.input.bind is True
    assert cfg.pipeline.stop_after_s == 2.0 and isinstance(cfg.pipeline.stop_after_s, float)
    assert cfg.output == ServiceConfig().output


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"input": {"adress": "tcp://127.0.0.1:1"}}, "adress"),
        ({"inputs": {}}, "inputs"),
        ({"input": {"bind": "yes"}}, "bind"),
        ({"input": {"max_message_bytes": 10}}, "max_message_bytes"),
        ({"pipeline": {"intake_queue_frames": 0}}, "intake_queue_frames"),
        ({"output": {"heartbeat_every_s": float("nan")}}, "heartbeat_every_s"),
        ({"status": {"prometheus_port": 70000}}, "prometheus_port"),
        ({"input": {"address": "tcp://10.1.2.3:5555"}}, "10.1.2.3"),
        ({"output": {"address": "tcp://*:5556"}}, "*:5556"),
        ({"input": {"address": "udp://127.0.0.1:1"}}, "udp://"),
        ({"input": {"curve_secret_key_file": "/nonexistent/key"}}, "/nonexistent/key"),
        ({"deconv": 3}, "deconv"),
    ],
)
def test_bad_values_are_rejected_naming_them(data: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=None) as exc:
        config_from_dict(data)
    assert needle in str(exc.value)


def test_non_loopback_only_when_asked() -> None:
    cfg = config_from_dict({"input": {"address": "tcp://10.1.2.3:5555", "allow_non_loopback": True}})
    assert cfg.input.address == "tcp://10.1.2.3:5555"
    assert is_loopback_address("tcp://127.0.0.1:5")
    assert is_loopback_address("tcp://localhost:5")
    assert is_loopback_address("ipc:///tmp/x")
    assert not is_loopback_address("tcp://0.0.0.0:5")
    assert not is_loopback_address("tcp://*:5")


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.toml"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[input\n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(bad)
    unk = tmp_path / "unk.toml"
    unk.write_text("[recording]\nenabld = true\n")
    with pytest.raises(ConfigError, match="enabld"):
        load_config(unk)


def test_replace_updates_one_field() -> None:
    cfg = ServiceConfig().replace(status={"summary_json": "x.json"})
    assert cfg.status.summary_json == "x.json"
    assert cfg.status.publish_every_s == ServiceConfig().status.publish_every_s
    with pytest.raises(ConfigError, match="nonsense"):
        ServiceConfig().replace(status={"nonsense": 1})


def test_serve_print_default_config(capsys: pytest.CaptureFixture[str]) -> None:
    from cli.commands import serve

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    assert serve.run(parser.parse_args(["--print-default-config"])) == 0
    out = capsys.readouterr().out
    assert config_from_dict(tomllib.loads(out)) == ServiceConfig()


# ------------------------------------------------------------------ one settings tree

def test_the_tree_nests_the_stages_own_settings_with_the_serve_defaults() -> None:
    from rt_decoder.deconv import DeconvSettings
    from rt_decoder.recon import LIVE_OPTIM, LiveSettings
    from rt_decoder.recon.stage import ReconstructionSettings

    cfg = ServiceConfig()
    assert cfg.reconstruction == ReconstructionSettings() and cfg.reconstruction.live == LiveSettings()
    assert cfg.deconv == DeconvSettings() and cfg.deconv_keys == frozenset()
    live = cfg.reconstruction.live
    # what `serve` ran before the tree was unified
    assert (live.lag_frames, live.target_ramp_frames, live.budget_ms, live.steps_per_member) == (15, 8, 20.0, 3)
    assert live.optim == LIVE_OPTIM and (live.optim.learning_rate_px, live.optim.smooth_sigma_px,
                                         live.optim.smooth_sigma_frames) == (300.0, 2.0, 1.0)
    # the live graph's length is derived from the one lag
    assert cfg.reconstruction.live_frames == live.lag_frames + 1 == live.live_frames
    assert ServiceConfig().replace(reconstruction={"cached_context": False}).reconstruction.live_frames == 0


def test_nested_tables_load_and_unset_keys_keep_the_parents_defaults(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[reconstruction]\nthreads = 1\n[reconstruction.live]\nlag_frames = 5\n"
                 "[reconstruction.live.optim]\nlearning_rate_px = 100\n")
    r = load_config(p).reconstruction
    assert r.threads == 1 and r.live.lag_frames == 5 and r.live.budget_ms == 20.0
    assert r.live.optim.learning_rate_px == 100.0 and isinstance(r.live.optim.learning_rate_px, float)
    assert r.live.optim.smooth_sigma_px == 2.0       # the live default, not OptimSettings()'s 0
    assert r.live_frames == 6


@pytest.mark.parametrize(
    ("data", "needles"),
    [
        ({"reconstruction": {"live": {"optim": {"lerning_rate_px": 1.0}}}},
         ["[reconstruction.live.optim]", "'lerning_rate_px'", "known:", "learning_rate_px"]),
        ({"reconstruction": {"live": {"lagframes": 1}}}, ["[reconstruction.live]", "lagframes"]),
        ({"reconstruction": {"live": {"lag_frames": 500}}},
         ["[reconstruction.live] lag_frames = 500 is above its maximum 120"]),
        ({"reconstruction": {"live": {"lag_frames": "5"}}}, ["[reconstruction.live] lag_frames must be an integer"]),
        ({"reconstruction": {"live": {"optim": {"momentum": 1.5}}}},
         ["[reconstruction.live.optim] momentum = 1.5 is above its maximum 0.999"]),
        ({"reconstruction": {"backend": "cuda"}}, ["[reconstruction] backend must be one of", "'cuda'"]),
        ({"reconstruction": {"live": {"warm_start": "magic"}}}, ["[reconstruction.live] warm_start", "previous"]),
        ({"reconstruction": {"live": 3}}, ["[reconstruction.live] must be a table"]),
        ({"deconv": {"modle": "ar1"}}, ["[deconv]", "modle"]),
        ({"deconv": {"model": "ar3"}}, ["[deconv] model must be one of"]),
        ({"deconv": {"lag_frames": 70, "history_frames": 64}}, ["[deconv]", "lag_frames", "history_frames"]),
    ],
)
def test_nested_errors_name_the_dotted_section_and_key(data: dict, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as exc:
        config_from_dict(data)
    for needle in needles:
        assert needle in str(exc.value), (needle, str(exc.value))


def test_old_flat_reconstruction_keys_load_at_their_new_place_with_a_warning() -> None:
    from rt_decoder.settings import SettingsDeprecationWarning

    with pytest.warns(SettingsDeprecationWarning) as rec:
        old = config_from_dict({"reconstruction": {"lag_frames": 5, "fixed_steps": 2, "learning_rate_px": 100.0,
                                                   "threads": 1}})
    messages = sorted(str(w.message) for w in rec)
    assert len(messages) == 3
    assert "[reconstruction] lag_frames is deprecated at this place: write it as [reconstruction.live] lag_frames" \
        in messages[1]
    assert "[reconstruction.live.optim] learning_rate_px" in messages[2]
    new = config_from_dict({"reconstruction": {"threads": 1, "live": {"lag_frames": 5, "fixed_steps": 2,
                                                                      "optim": {"learning_rate_px": 100.0}}}})
    assert old == new
    # old and new place together: refused, not silently resolved
    with pytest.warns(SettingsDeprecationWarning), pytest.raises(ConfigError, match="same setting"):
        config_from_dict({"reconstruction": {"lag_frames": 5, "live": {"lag_frames": 6}}})


def test_default_config_is_generated_from_the_classes_and_lists_every_option() -> None:
    import dataclasses

    text = default_config_toml()
    for table, obj in (("reconstruction", ServiceConfig().reconstruction),
                       ("reconstruction.live", ServiceConfig().reconstruction.live),
                       ("reconstruction.live.optim", ServiceConfig().reconstruction.live.optim),
                       ("deconv", ServiceConfig().deconv)):
        assert f"[{table}]" in text
        for f in dataclasses.fields(obj):
            if not dataclasses.is_dataclass(getattr(obj, f.name)):
                assert f"{f.name} = " in text, (table, f.name)
    assert "(range 0..120)" in text and "(one of: previous, grey)" in text
    # [deconv] keys are written commented: loading the printed file leaves them to a model's recorded settings
    assert "# model = " in text and config_from_dict(tomllib.loads(text)).deconv_keys == frozenset()


def test_render_toml_round_trips_a_non_default_tree() -> None:
    from rt_decoder.settings import render_toml

    cfg = ServiceConfig().replace(reconstruction={"backend": "torch", "live": {"lag_frames": 7, "warm_start": "grey",
                                                                                "optim": {"momentum": 0.5}}},
                                  pipeline={"stop_on_session_end": True})
    assert config_from_dict(tomllib.loads("\n".join(render_toml(cfg)))) == cfg


def test_deconv_is_typed_and_the_keys_set_win_over_the_models_recorded_settings() -> None:
    from rt_decoder.deconv import DeconvSettings

    cfg = config_from_dict({"deconv": {"model": "ar2", "init_frames": 30}})
    assert cfg.deconv == DeconvSettings(model="ar2", init_frames=30)
    assert cfg.deconv_keys == {"model", "init_frames"} and cfg.deconv_dict == {"init_frames": 30, "model": "ar2"}
    model = {"model": "ar1", "kinetics": "per_roi", "revise_frames": 63}
    got = cfg.deconv_for_model(model)
    assert got == DeconvSettings(model="ar2", kinetics="per_roi", revise_frames=63, init_frames=30)
    assert ServiceConfig().deconv_for_model(model) == DeconvSettings(**model)
    assert ServiceConfig().deconv_for_model({}) == DeconvSettings()
    # a key set to its default value still wins (the user said so)
    assert config_from_dict({"deconv": {"model": "auto"}}).deconv_for_model(model).model == "auto"
    with pytest.raises(ConfigError, match="unknown keys"):
        ServiceConfig().deconv_for_model({"bogus": 1})
    # replace() records the keys it sets
    r = ServiceConfig().replace(deconv={"kinetics": "fixed"})
    assert r.deconv.kinetics == "fixed" and r.deconv_for_model(model).kinetics == "fixed"
    assert r.deconv_for_model(model).model == "ar1"


def test_settings_are_validated_however_they_are_made() -> None:
    from rt_decoder.recon import LiveSettings, OptimSettings
    from rt_decoder.recon.stage import ReconstructionSettings

    with pytest.raises(ConfigError, match=r"LiveSettings\.lag_frames = 500 is above its maximum 120"):
        LiveSettings(lag_frames=500)
    with pytest.raises(ConfigError, match=r"OptimSettings\.learning_rate_px"):
        OptimSettings(learning_rate_px=0.0)
    with pytest.raises(ConfigError, match=r"ReconstructionSettings\.backend must be one of"):
        ReconstructionSettings(backend="cuda")
    with pytest.raises(ConfigError, match="bogus"):
        LiveSettings.from_dict({"lag_frames": 3, "bogus": 1})


def test_build_stage_is_none_when_disabled() -> None:
    from cli.commands.serve import build_stage

    assert build_stage(ServiceConfig().replace(reconstruction={"enabled": False})) is None
