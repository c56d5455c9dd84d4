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
    is_loopback_address,
    load_config,
)


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
