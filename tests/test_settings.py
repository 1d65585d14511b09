"""Settings: precedence, validation messages that name the setting, secrets that never show."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.settings import POLICY_ROUTES, PolicyBindingSettings, Secret, SettingsError, load_settings


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


def test_worker_recycling_and_the_cache_budget_are_settings(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("detector: {recycle_after_jobs: 500, cache_mib: 8}\n")
    env = {"PII_GATEWAY_DETECTOR__RECYCLE_ABOVE_MIB": "400"}
    s = load_settings({}, environ=env, config_file=config)
    assert (s.detector.recycle_after_jobs, s.detector.recycle_above_mib, s.detector.cache_mib) == (500, 400, 8)
    defaults = load_settings({}, environ={}).detector
    assert (defaults.recycle_after_jobs, defaults.recycle_above_mib, defaults.cache_mib) == (100_000, 0, 32)


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
        ({}, {"PII_GATEWAY_DETECTOR__RECYCLE_AFTER_JOBS": "-1"}, "setting 'detector.recycle_after_jobs'"),
        ({}, {"PII_GATEWAY_DETECTOR__CACHE_MIB": "lots"}, "setting 'detector.cache_mib'"),
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


@pytest.mark.parametrize(
    ("binding", "expected"),
    [
        (
            "{route: chat.completion, policy: strict}",
            "setting 'policy_bindings.0.route' (from {config}; env PII_GATEWAY_POLICY_BINDINGS__0__ROUTE): "
            "unknown route 'chat.completion'; the gateway serves: anthropic.messages, chat.completions, "
            "completions, embeddings, responses",
        ),
        (
            "{policy: strict}",
            "setting 'policy_bindings.0' (from {config}; env PII_GATEWAY_POLICY_BINDINGS__0): the binding to "
            "policy 'strict' sets neither 'model' nor 'route'",
        ),
        ("{route: models, policy: strict}", "unknown route 'models'"),
    ],
)
def test_policy_bindings_are_checked_at_start(tmp_path: Path, binding: str, expected: str) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(f"policy_bindings:\n  - {{model: 'gpt-4o*', policy: strict}}\n  - {binding}\n")
    with pytest.raises(SettingsError) as info:
        load_settings({}, environ={}, config_file=config)
    assert expected.format(config=config).replace(".0", ".1").replace("__0", "__1") in str(info.value)


def test_policy_binding_routes_are_the_routes_the_gateway_serves() -> None:
    from gateway.app import AZURE_ROUTES, ROUTES

    assert {api.route for api in [*ROUTES.values(), *AZURE_ROUTES.values()]} == POLICY_ROUTES
    s = load_settings({}, environ={}, config_file=None)
    assert s.policy_bindings == []
    for route in POLICY_ROUTES:
        assert PolicyBindingSettings(route=route, policy="strict").route == route


@pytest.mark.parametrize(
    ("upstream", "warned"),
    [
        ("https://api.openai.com", True),
        ("https://api.openai.com/", True),
        ("http://vllm:8000", True),
        ("https://api.openai.com/v1", False),
        ("https://gateway.example/openai/v1", False),
        ("https://contoso.openai.azure.com", False),  # Azure's base has no path
    ],
)
def test_an_upstream_without_a_path_is_warned_about_not_refused(
    upstream: str, warned: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.settings"):
        s = load_settings({"upstream": upstream}, environ={})
    assert s.upstream == upstream.rstrip("/")
    messages = [r.getMessage() for r in caplog.records]
    if warned:
        (message,) = messages
        assert message.startswith("setting 'upstream': the base URL")
        assert "/v1" in message
    else:
        assert messages == []


def test_each_upstream_of_several_is_named_in_the_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(
        "upstreams:\n  - {name: a, url: 'https://api.openai.com/v1'}\n  - {name: b, url: 'https://api.anthropic.com', "
        "kind: anthropic}\n"
    )
    with caplog.at_level(logging.WARNING, logger="gateway.settings"):
        load_settings({}, environ={}, config_file=config)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["setting 'upstreams.1.url'"]


def test_a_kubernetes_service_link_in_the_port_variable_is_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="gateway.settings"):
        s = load_settings({}, environ={"PII_GATEWAY_PORT": "tcp://10.0.0.1:8080"})
    assert s.port == 8080
    (record,) = caplog.records
    assert "PII_GATEWAY_PORT" in record.getMessage()
    assert "ignored" in record.getMessage()
    assert load_settings({"port": 9000}, environ={"PII_GATEWAY_PORT": "tcp://10.0.0.1:8080"}).port == 9000
    with pytest.raises(SettingsError, match="setting 'port'"):
        load_settings({}, environ={"PII_GATEWAY_PORT": "http://x"})  # anything else is still an error
