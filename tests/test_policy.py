"""Policies: validation with file/line/field, strictness, selection, and every shipped policy's examples."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.admin import run_examples
from gateway.detector import PresidioDetector
from gateway.errors import WeakerPolicy
from gateway.policy import KNOWN_ENTITIES, Action, PolicyBook, PolicyError, load_policy_dir, parse_policy
from gateway.redaction import Redactor
from gateway.settings import PolicyBindingSettings, bundled_policies_dir

GOOD = """\
name: team
entities:
  PERSON: pseudonymize
  EMAIL_ADDRESS: {action: redact, threshold: 0.5}
"""


def test_a_valid_policy_loads_with_shorthand_and_defaults() -> None:
    policy = parse_policy(GOOD, "team.yaml")
    assert policy.entities["PERSON"].action is Action.PSEUDONYMIZE
    assert policy.threshold("EMAIL_ADDRESS") == 0.5
    assert policy.threshold("PERSON") == policy.score_threshold
    assert policy.restore_answers is True


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("pseudonymize", "pseudonymise"), "team.yaml:3: entities.PERSON.action: Input should be"),
        (GOOD.replace("PERSON:", "PERSN:"), "team.yaml:3: entities.PERSN: unknown entity type 'PERSN'"),
        (GOOD + "restore_answer: false\n", "team.yaml:5: restore_answer: unknown key"),
        (GOOD.replace("0.5", "1.5"), "team.yaml:4: entities.EMAIL_ADDRESS.threshold"),
        (GOOD + "transcript: everything\n", "team.yaml:5: transcript"),
        (GOOD + "recognizers:\n  - {name: x, entity: X, patterns: [{regex: '(unclosed'}]}\n", "does not compile"),
        ("name: [unclosed\n", "team.yaml:2: not valid YAML"),
        (GOOD + "allow_list:\n  - {exact: a, regex: b}\n", "exactly one of 'exact' or 'regex'"),
    ],
)
def test_mistakes_are_errors_that_name_file_line_and_field(text: str, expected: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "team.yaml")
    assert expected in str(info.value)


def test_an_unknown_entity_is_reported_at_its_line_together_with_other_errors() -> None:
    text = "name: team\nentities:\n  PERSON: pseudonymise\n  PERSN: redact\n  EMAIL_ADDRESS: {threshold: 1.5}\n"
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "team.yaml")
    assert str(info.value).splitlines() == [
        "team.yaml:3: entities.PERSON.action: Input should be 'block', 'redact', 'mask', 'hash', 'pseudonymize' "
        "or 'allow'",
        "team.yaml:4: entities.PERSN: unknown entity type 'PERSN'; did you mean 'PERSON'? (known: the types in "
        "docs/policies.md, or one defined under 'recognizers')",
        "team.yaml:5: entities.EMAIL_ADDRESS.threshold: Input should be less than or equal to 1",
    ]
    # An entity type defined by the policy's own recognizers is known.
    parse_policy(text.replace("pseudonymise", "allow").replace("1.5", "0.5") + RECOGNIZER_PERSN, "team.yaml")


RECOGNIZER_PERSN = "recognizers:\n  - {name: persn, entity: PERSN, deny_list: [Zorvath]}\n"


@pytest.mark.parametrize(
    ("languages", "expected"),
    [
        ("[en, xx]", "languages: name one language"),
        ("[de]", "languages.0: 'de' is not analysed by this gateway: its NLP engine analyses en"),
        ("[en, en]", None),
        ("[en]", None),
    ],
)
def test_a_policy_names_only_the_language_the_engine_analyses(languages: str, expected: str | None) -> None:
    text = f"name: team\nlanguages: {languages}\n"
    if expected is None:
        assert parse_policy(text, "team.yaml", languages=["en"]).languages[0] == "en"
        return
    with pytest.raises(PolicyError, match=expected):
        parse_policy(text, "team.yaml", languages=["en"])


def test_a_bound_policy_must_be_loaded(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD.replace("team", "default"))
    bindings = [PolicyBindingSettings(model="x-*", policy="default"), PolicyBindingSettings(model="y", policy="strct")]
    with pytest.raises(PolicyError) as info:
        load_policy_dir(tmp_path, "default", bindings=bindings)
    assert str(info.value) == "setting 'policy_bindings.1.policy': no policy named 'strct' is loaded (loaded: default)"
    with pytest.raises(PolicyError, match="setting 'default_policy'"):
        load_policy_dir(tmp_path, "strict", bindings=bindings[:1])


def test_policy_check_reports_every_mistake_with_line_and_field(tmp_path: Path) -> None:
    """``pii-gateway policy check`` as CI runs it: unknown entity, bad field, unsupported languages."""
    typo = tmp_path / "typo.yaml"
    typo.write_text("name: typo\nentities:\n  PERSN: pseudonymize\n  EMAIL_ADDRESS: {action: obliterate}\n")
    two = tmp_path / "two.yaml"
    two.write_text("name: two\nlanguages: [en, xx]\n")
    german = tmp_path / "german.yaml"
    german.write_text("name: german\nlanguages:\n  - de\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "policy", "check", "--schema-only", str(typo), str(two), str(german)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    errors = result.stderr.splitlines()
    assert f"{typo}:3: entities.PERSN: unknown entity type 'PERSN'; did you mean 'PERSON'?" in result.stderr
    assert any(e.startswith(f"{typo}:4: entities.EMAIL_ADDRESS.action: Input should be") for e in errors)
    assert any(e.startswith(f"{two}:2: languages: name one language") for e in errors)
    assert any(e.startswith(f"{two}:2: languages.1: 'xx' is not analysed by this gateway") for e in errors)
    assert any(e.startswith(f"{german}:3: languages.0: 'de' is not analysed by this gateway") for e in errors)


def test_audit_allows_every_entity_type_the_detector_produces_and_says_so() -> None:
    path = bundled_policies_dir() / "audit.yaml"
    policy = load_policy_dir(bundled_policies_dir(), "default").get("audit")
    assert set(policy.entities) == KNOWN_ENTITIES
    assert {rule.action for rule in policy.entities.values()} == {Action.ALLOW}
    assert "LETS PERSONAL DATA THROUGH" in path.read_text().splitlines()[0]
    assert "LETS PERSONAL DATA THROUGH" in yaml.safe_load(path.read_text())["description"]


def test_a_bad_file_rejects_the_whole_folder(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD.replace("team", "default"))
    (tmp_path / "b.yaml").write_text(GOOD.replace("pseudonymize", "obliterate"))
    with pytest.raises(PolicyError, match=r"b\.yaml:3"):
        load_policy_dir(tmp_path, "default")


def test_duplicate_names_and_missing_default_are_errors(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD)
    with pytest.raises(PolicyError, match="defined twice"):
        load_policy_dir(tmp_path, "team")
    (tmp_path / "b.yaml").unlink()
    with pytest.raises(PolicyError, match="default policy 'default'"):
        load_policy_dir(tmp_path, "default")


def test_strictness_ordering_of_the_shipped_policies(policy_book: PolicyBook) -> None:
    default, strict, audit = (policy_book.get(n) for n in ("default", "strict", "audit"))
    assert strict.at_least_as_strict_as(default)
    assert not default.at_least_as_strict_as(strict)
    assert default.at_least_as_strict_as(audit)
    assert not audit.at_least_as_strict_as(default)
    assert default.at_least_as_strict_as(default)


def test_selection_never_weakens_a_keys_policy(policy_book: PolicyBook) -> None:
    bindings = [
        PolicyBindingSettings(model="gpt-4o*", policy="strict"),
        PolicyBindingSettings(model="local-*", policy="audit"),
    ]

    def pick(bound: str | None, model: str, requested: str | None = None) -> str:
        return policy_book.select(
            bound=bound, model=model, route="chat.completions", bindings=bindings, requested=requested
        ).name

    assert pick(None, "gpt-3.5") == "default"
    assert pick(None, "gpt-4o-mini") == "strict"
    assert pick(None, "local-llama") == "audit"
    assert pick("default", "local-llama") == "default"  # a weaker binding cannot lower the key's policy
    assert pick("default", "gpt-4o") == "strict"  # a stricter one applies
    assert pick("default", "x", requested="strict") == "strict"
    with pytest.raises(WeakerPolicy):
        pick("strict", "x", requested="default")
    with pytest.raises(WeakerPolicy):
        pick("default", "x", requested="audit")
    with pytest.raises(WeakerPolicy):
        pick("default", "x", requested="no-such-policy")


@pytest.mark.parametrize("name", ["default", "strict", "audit", "healthcare", "finance"])
async def test_every_shipped_policy_passes_its_own_examples(name: str, detector: PresidioDetector) -> None:
    policy = load_policy_dir(bundled_policies_dir(), "default").get(name)
    assert policy.examples, f"{name} ships without examples"
    results = await run_examples(policy, detector, Redactor(detector, b"k"))
    assert [r.problems for r in results if r.problems] == []


async def test_a_broken_example_fails_policy_check(detector: PresidioDetector) -> None:
    policy = parse_policy(
        GOOD + "examples:\n  - {text: 'Write to John Smith today.', hidden: [today], kept: [John Smith]}\n", "t.yaml"
    )
    (result,) = await run_examples(policy, detector, Redactor(detector, b"k"))
    assert "'today' would reach the upstream" in result.problems
    assert "'John Smith' would not reach the upstream unchanged" in result.problems
