"""Policies: validation with file/line/field, strictness, selection, and every shipped policy's examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.admin import run_examples
from gateway.detector import PresidioDetector
from gateway.errors import WeakerPolicy
from gateway.policy import Action, PolicyBook, PolicyError, load_policy_dir, parse_policy
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
        (GOOD.replace("PERSON:", "PERSN:"), "unknown entity type 'PERSN'"),
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
