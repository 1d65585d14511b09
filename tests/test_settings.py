"""Settings: precedence, validation messages that name the setting, secrets that never show."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import Secret, SettingsError, load_settings


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("port: 7000\nhost: 0.0.0.0\nupstream: https://file.example/v1\ndetector: {workers: 3}\n")
    env = {"PII_GATEWAY_PORT": "7100", "PII_GATEWAY_DETECTOR__WORKERS": "1"}
    s = load_settings({"port": 7200}, environ=env, config_file=config)
    assert s.port == 7200
    assert s.host == "0.0.0.0"
    assert s.upstream == "https://file.example/v1"
    assert s.detector.workers == 1
    assert load_settings({}, environ=env, config_file=config).port == 7100


def test_config_file_from_environment(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("log_level: DEBUG\n")
    assert load_settings({}, environ={"PII_GATEWAY_CONFIG": str(config)}).log_level == "debug"


@pytest.mark.parametrize(
    ("flags", "env", "expected"),
    [
        ({"port": "eighty"}, {}, "setting 'port' (from command line"),
        ({}, {"PII_GATEWAY_UPSTREAM": "ftp://x/v1"}, "setting 'upstream' (from environment"),
        ({}, {"PII_GATEWAY_UPSTREAM": "https://user:pw@x/v1"}, "must not carry credentials"),
        ({}, {"PII_GATEWAY_DETECTOR__WORKERS": "-2"}, "setting 'detector.workers'"),
        ({}, {"PII_GATEWAY_DETECTOR__WROKERS": "2"}, "setting 'detector.wrokers' (from environment"),
        ({"log_level": "loud"}, {}, "setting 'log_level'"),
    ],
)
def test_bad_values_are_named_with_the_reason(flags: dict[str, object], env: dict[str, str], expected: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(flags, environ=env)
    assert expected in str(info.value)
    assert "pw@" not in str(info.value)


def test_unknown_key_in_config_file_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("prot: 8080\n")
    with pytest.raises(SettingsError, match=r"setting 'prot'.*unknown setting"):
        load_settings({}, environ={}, config_file=config)


def test_kubernetes_service_link_variables_are_ignored() -> None:
    s = load_settings({}, environ={"PII_GATEWAY_SERVICE_HOST": "10.0.0.1", "PII_GATEWAY_PORT_8080_TCP": "tcp://x"})
    assert s.port == 8080


def test_secrets_never_show(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-very-secret\n")
    s = load_settings({}, environ={"PII_GATEWAY_UPSTREAM_API_KEY_FILE": str(key_file)})
    assert s.upstream_api_key == Secret("sk-very-secret")
    assert "sk-very-secret" not in repr(s)
    assert "sk-very-secret" not in str(s.model_dump())


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"nope\.yaml"):
        load_settings({}, environ={}, config_file=tmp_path / "nope.yaml")
