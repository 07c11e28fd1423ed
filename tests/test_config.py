"""Settings: the documented defaults are the real ones; bad files fail with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from device.core.config import Settings, load_settings, resolve_state_dir
from device.core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_default_toml_documents_exactly_the_built_in_defaults() -> None:
    assert load_settings(ROOT / "config" / "default.toml") == Settings()


def test_default_wakes_on_hey_jarvis() -> None:
    assert Settings().wake.models == ["hey_jarvis"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[wake]\nthreshold = 1.5\n", r"wake\.threshold: .*less than 1.*got 1\.5"),
        ("[wake]\nthreshold = \"high\"\n", r"wake\.threshold: .*number.*got 'high'"),
        ("[recorder]\ntrailing_silense_s = 0.5\n", r"recorder\.trailing_silense_s: unknown key"),
        ("[recorder]\npreroll_s = 1.0\n", r"recorder: .*keep_wake_word_audio"),
        ("[wake]\nmodels = []\n", r"wake\.models: .*at least 1"),
        ("[wake\nthreshold = 0.5\n", r"is not valid TOML"),
        ("[recorder]\nmax_length_s = -1\n", r"recorder\.max_length_s: .*greater than 0"),
        # a duration past the calendar: a traceback at the first retention sweep before
        ("[retention]\nmax_age = \"999999d\"\n", r"retention\.max_age: .*at most 36500d"),
        ("[voice]\ndelete_last_within = \"999999d\"\n", r"voice\.delete_last_within: .*at most 36500d"),
        # a '?' or '#' in the login would cut the URL there: the page and the log would show part of it
        ("[upload]\nurl = \"https://me:se?cret@uploads.example/up\"\n", r"upload\.url: "),
    ],
)
def test_malformed_config_names_the_key_and_the_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_settings(path)
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_state_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGE_RECORDER_STATE_DIR", str(tmp_path / "env"))
    assert resolve_state_dir(str(tmp_path / "cli")) == tmp_path / "cli"
    assert resolve_state_dir(None) == tmp_path / "env"
    monkeypatch.delenv("EDGE_RECORDER_STATE_DIR")
    monkeypatch.setenv("INVOCATION_ID", "abc")
    assert resolve_state_dir(None) == Path("/var/lib/edge-recorder")
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/custom")
    assert resolve_state_dir(None) == Path("/var/lib/custom")
    monkeypatch.delenv("INVOCATION_ID")
    monkeypatch.delenv("STATE_DIRECTORY")
    assert resolve_state_dir(None) == tmp_path / "home" / "data" / "edge-recorder"


@pytest.mark.parametrize("name", ["example-broker-tls.toml", "example-uploads.toml"])
def test_example_configs_load_and_set_what_they_show(name: str) -> None:
    settings = load_settings(ROOT / "config" / name)
    assert settings != Settings()
    if "broker" in name:
        assert settings.mqtt.tls.enabled and settings.mqtt.host and settings.mqtt.password_file
    else:
        assert settings.upload.url and settings.upload.url.startswith("https://")
