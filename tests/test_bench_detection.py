"""The detection benchmark (bench/detection.py): its scoring rules on hand-made cases, and a tiny real run."""

from __future__ import annotations

import json
from pathlib import Path

from bench.chat_prompts import Span, chat_samples
from bench.detection import (
    SCORED,
    Options,
    _clean_generated,
    evaluator_samples,
    kept_labels,
    leaked,
    lost_words,
    main,
    replace_findings,
    restored_as_policy_allows,
    run,
)
from gateway.policy import parse_policy


def span(text: str, value: str, label: str = "PERSON", nth: int = 0) -> Span:
    start = -1
    for _ in range(nth + 1):
        start = text.index(value, start + 1)
    return Span(start, start + len(value), label)


def test_a_value_fully_replaced_does_not_leak() -> None:
    text = "Please ask Jane Doe about the invoice."
    name = span(text, "Jane Doe")
    assert leaked(text, [name], name, "Please ask <PERSON_1> about the invoice.") is False


def test_a_surname_left_in_is_a_leak() -> None:
    text = "Please ask Jane Doe about the invoice."
    name = span(text, "Jane Doe")
    assert leaked(text, [name], name, "Please ask <PERSON_1> Doe about the invoice.") is True
    assert leaked(text, [name], name, "Please ask JANE <PERSON_1> about the invoice.") is True  # case-insensitive


def test_a_word_also_elsewhere_in_the_text_is_not_evidence() -> None:
    text = "Tell Anna Berg that the Berg account is closed."
    name = span(text, "Anna Berg")
    # "Berg" is in the plain text too: the upstream may see it there.
    assert leaked(text, [name], name, "Tell <PERSON_1> that the Berg account is closed.") is False
    assert leaked(text, [name], name, "Tell Anna <PERSON_1> that the Berg account is closed.") is True


def test_a_word_shared_with_another_value_is_not_evidence() -> None:
    text = "Write to Jane Doe at jane.doe@example.org today."
    name, email = span(text, "Jane Doe"), span(text, "jane.doe@example.org", "EMAIL_ADDRESS")
    upstream = "Write to Jane Doe at <EMAIL_ADDRESS_1> today."
    assert leaked(text, [name, email], email, upstream) is False
    assert leaked(text, [name, email], name, upstream) is True
    # The name's words are all in the e-mail address too: the whole name is looked for instead.
    assert leaked(text, [name, email], name, "Write to <PERSON_1> at <EMAIL_ADDRESS_1> today.") is False


def test_a_repeated_value_is_scored_on_its_own_words() -> None:
    text = "Csanad had given Csanad his address."
    first, second = span(text, "Csanad"), span(text, "Csanad", nth=1)
    assert leaked(text, [first, second], second, "<PERSON_1> had given <PERSON_1> his address.") is False
    assert leaked(text, [first, second], first, "<PERSON_1> had given Csanad his address.") is True


def test_digit_runs_match_inside_the_upstream_digits() -> None:
    text = "My card 4111 1111 1111 1234 was charged twice."
    card = span(text, "4111 1111 1111 1234", "CREDIT_CARD")
    assert leaked(text, [card], card, "My card <CREDIT_CARD_1> was charged twice.") is False
    assert leaked(text, [card], card, "My card **** **** **** 1234 was charged twice.") is True
    assert leaked(text, [card], card, "My card 41111111 was charged twice.") is True


def test_a_value_without_fragments_is_matched_whole() -> None:
    text = "Requests from 10.0.0.12 fail."
    ip = span(text, "10.0.0.12", "IP_ADDRESS")
    assert leaked(text, [ip], ip, "Requests from <IP_ADDRESS_1> fail.") is False
    assert leaked(text, [ip], ip, "Requests from 10.0.0.12 fail.") is True
    assert leaked(text, [ip], ip, "Requests from 110.0.0.123 fail.") is False


def test_a_value_that_is_also_plain_text_is_unscorable() -> None:
    text = "Jo said: jo is fine."
    name = span(text, "Jo")
    assert leaked(text, [name], name, "<PERSON_1> said: jo is fine.") is None


def test_placeholder_names_are_not_words_of_the_upstream() -> None:
    text = "Ship it to 12 Address Lane please."
    street = span(text, "12 Address Lane", "STREET_ADDRESS")
    assert leaked(text, [street], street, "Ship it to <STREET_ADDRESS_1> please.") is False
    assert leaked(text, [street], street, "Ship it to <ADDRESS> please.") is False


def test_over_redaction_counts_plain_words_the_upstream_lost() -> None:
    text = "Please call Jane Doe today, call her twice."
    name = span(text, "Jane Doe")
    assert lost_words(text, [name], "Please call <PERSON_1> today, call her twice.") == (0, 6)
    assert lost_words(text, [name], "<PERSON_1> call <PERSON_2> today, her twice.") == (2, 6)


def test_the_baseline_merges_overlapping_findings() -> None:
    text = "Call John Smith now"
    findings = [(5, 15, "PERSON", 0.85), (10, 15, "LOCATION", 0.4), (16, 19, "DATE_TIME", 0.3)]
    assert replace_findings(text, findings) == "Call <PERSON> <DATE_TIME>"


def test_restoration_accepts_only_placeholders_the_policy_never_restores() -> None:
    prompt = "Use key abc123 for Jane."
    upstream = "Use key <SECRET_1> for <PERSON_1>."
    secret = frozenset({"SECRET"})
    assert restored_as_policy_allows(prompt, prompt, upstream, frozenset())
    assert restored_as_policy_allows(prompt, "Use key <SECRET_1> for Jane.", upstream, secret)
    assert not restored_as_policy_allows(prompt, "Use key <SECRET_1> for Jane.", upstream, frozenset())
    assert not restored_as_policy_allows(prompt, "Use key abc123 for <PERSON_1>.", upstream, secret)
    assert not restored_as_policy_allows(prompt, "Use key <SECRET_1> for Jane!", upstream, secret)
    assert not restored_as_policy_allows(prompt, "Use key <SECRET_2> for Jane.", upstream, secret)


def test_kept_labels_follow_the_policy_actions() -> None:
    text = "name: t\nentities:\n  PERSON: pseudonymize\n  EMAIL_ADDRESS: redact\n"
    assert kept_labels(parse_policy(text, "t.yaml")) == {"EMAIL_ADDRESS"}
    no_restore = parse_policy(text + "restore_answers: false\n", "t.yaml")
    assert kept_labels(no_restore) == {"PERSON", "EMAIL_ADDRESS"}


def test_the_labelled_sets_are_reproducible_and_their_spans_line_up() -> None:
    generated = evaluator_samples(12, seed=3)
    assert generated == evaluator_samples(12, seed=3)
    chats = chat_samples(45, seed=3)
    assert chats == chat_samples(45, seed=3)
    assert len(generated) == 12 and len(chats) == 45
    for sample in [*generated, *chats]:
        assert "{" not in sample.text, sample.text
        assert sample.source == "chat" or "\\n" not in sample.text, sample.text
        for s in sample.spans:
            value = sample.text[s.start : s.end]
            assert value.strip(), sample.id
            assert sample.source == "evaluator" or value == value.strip(), (sample.id, value)
    labels = {s.label for sample in chats for s in sample.spans}
    assert set(SCORED) <= labels


async def test_a_tiny_run_through_the_real_gateway() -> None:
    report = await run(Options(sentences=12, chat=6, workers=0, quiet=True))
    assert set(report.labels) == {*SCORED, "other"}
    assert set(report.restoration) == {"plain"}
    assert report.restoration["plain"].total == 18
    assert report.restoration["plain"].pct == 100.0, report.restoration["plain"].failures
    assert report.errors == []
    assert report.overall.n == sum(report.labels[label].n for label in SCORED) > 0
    assert len(report.detection_ms["gateway"].ms) == len(report.detection_ms["stock"].ms) == 18
    assert report.over_redaction["gateway"].total > 0


def test_the_command_line_streams_and_writes_the_reports(tmp_path: Path) -> None:
    out, raw = tmp_path / "detection.md", tmp_path / "raw.json"
    argv = ["--sentences", "12", "--chat", "6", "--stream", "--workers", "0", "--quiet"]
    assert main([*argv, "--out", str(out), "--json", str(raw)]) == 0
    numbers = json.loads(raw.read_text(encoding="utf-8"))
    assert set(numbers) >= {"config", "labels", "overall", "over_redaction", "detection_ms", "restoration"}
    for mode in ("plain", "stream"):
        assert numbers["restoration"][mode]["pct"] == 100.0, numbers["restoration"][mode]["failures"]
        assert numbers["restoration"][mode]["total"] == 18
    assert numbers["stream_mismatches"] == 0
    assert numbers["config"]["seed"] == 42
    page = out.read_text(encoding="utf-8")
    assert "| label | n | leak % gateway | leak % stock |" in page
    assert "--sentences 12 --chat 6 --seed 42 --stream" in page


def test_the_generators_missing_values_are_dropped_and_the_spans_follow() -> None:
    text = "Ship to 12 Main St\\nFitzroy, nan 99562 or HOLUM nan\\n, nan\\n 60394. Thanks nancy."
    street = text.index("12 Main St"), text.index(" or")
    place = text.index("HOLUM"), text.index(". Thanks")
    cleaned, spans = _clean_generated(text, [(*street, "STREET_ADDRESS"), (*place, "GPE")])
    assert cleaned == "Ship to 12 Main St\nFitzroy, 99562 or HOLUM\n 60394. Thanks nancy."
    assert [cleaned[s.start : s.end] for s in spans] == ["12 Main St\nFitzroy, 99562", "HOLUM\n 60394"]
    kept, _ = _clean_generated(text, [(*street, "STREET_ADDRESS")], keep_nan=True)
    assert kept == text.replace("\\n", "\n")
