"""Placeholder table and the streaming restorer: numbering, collisions, and restoration at every split."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.placeholders import PlaceholderRestorer, Redactions, json_escaped, placeholders_in


def test_same_value_same_placeholder_and_distinct_values_distinct() -> None:
    r = Redactions()
    a = r.placeholder_for("PERSON", "Ann Lee")
    b = r.placeholder_for("PERSON", "Bo Chen")
    assert a == "<PERSON_1>"
    assert b == "<PERSON_2>"
    assert r.placeholder_for("PERSON", "Ann Lee") == a
    # A value keeps its first placeholder even if later found as another type.
    assert r.placeholder_for("LOCATION", "Ann Lee") == a
    assert r.placeholder_for("EMAIL_ADDRESS", "x@y.org") == "<EMAIL_ADDRESS_1>"


def test_numbering_skips_placeholder_shaped_text_already_in_the_request() -> None:
    r = Redactions(reserved=placeholders_in("I literally typed <PERSON_1> and <PERSON_3>"))
    assert r.placeholder_for("PERSON", "Ann") == "<PERSON_2>"
    assert r.placeholder_for("PERSON", "Bo") == "<PERSON_4>"
    assert "<PERSON_1>" not in r.restorable


def test_literal_placeholder_from_the_prompt_is_left_alone_and_reveals_nothing() -> None:
    r = Redactions(reserved={"<PERSON_1>"})
    mine = r.placeholder_for("PERSON", "Ann")
    restorer = PlaceholderRestorer(r.restorable)
    out = restorer.restore(f"<PERSON_1> met {mine}")
    assert out == "<PERSON_1> met Ann"
    assert restorer.unresolved == 1
    assert restorer.restored == 1


def test_redact_placeholders_are_never_restored() -> None:
    r = Redactions()
    p = r.placeholder_for("US_SSN", "078-05-1120", restorable=False)
    assert PlaceholderRestorer(r.restorable).restore(f"ssn {p}") == f"ssn {p}"


def test_json_escape_mode_escapes_values_for_json_strings() -> None:
    table = {"<PERSON_1>": 'Ann "the hammer" O\\Neil\n'}
    args = '{"name": "<PERSON_1>"}'
    restored = PlaceholderRestorer(table, json_escape=True).restore(args)
    assert orjson.loads(restored) == {"name": 'Ann "the hammer" O\\Neil\n'}
    assert json_escaped('a"b') == 'a\\"b'


TABLE = {"<PERSON_1>": "Ann Lee", "<PERSON_12>": "Bo Chen", "<EMAIL_ADDRESS_1>": "ann@example.org"}
EXPECTED_CASES = {
    "Hello <PERSON_1>!": "Hello Ann Lee!",
    "<PERSON_1><PERSON_12>": "Ann LeeBo Chen",
    "mail <EMAIL_ADDRESS_1>.": "mail ann@example.org.",
    "<PERSON_2> is not ours": "<PERSON_2> is not ours",
    "a < b and <PERSON_ not closed": "a < b and <PERSON_ not closed",
    "<<PERSON_1>>": "<Ann Lee>",
    "ends with <PERSON_1": "ends with <PERSON_1",
    "<PERSON_123>": "<PERSON_123>",
}


def test_restorer_gives_the_same_text_at_every_split_offset() -> None:
    for text, expected in EXPECTED_CASES.items():
        assert PlaceholderRestorer(TABLE).restore(text) == expected
        for cut in range(len(text) + 1):
            r = PlaceholderRestorer(TABLE)
            out = r.feed(text[:cut]) + r.feed(text[cut:]) + r.flush()
            assert out == expected, (text, cut)
        # one character per feed
        r = PlaceholderRestorer(TABLE)
        assert "".join(r.feed(ch) for ch in text) + r.flush() == expected


def test_restorer_holds_back_only_a_possible_placeholder_prefix() -> None:
    r = PlaceholderRestorer(TABLE)
    assert r.feed("Hi <PER") == "Hi "
    assert r.holding
    assert r.feed("x") == "<PERx"  # no placeholder starts with <PERx: released at once
    assert not r.holding
    assert r.feed("a <b") == "a <b"  # '<b' cannot start a placeholder of this request
    assert r.feed("<") == ""
    assert r.flush() == "<"


SEGMENTS = st.lists(
    st.one_of(
        st.sampled_from([*TABLE, "<PERSON_2>", "<", ">", "_", "<PERSON", "<EMAIL_ADDRESS_", "1>"]),
        st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8),
    ),
    max_size=20,
)


@settings(max_examples=400, deadline=None)
@given(segments=SEGMENTS, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=12))
def test_property_streamed_restoration_equals_restoration_in_one_piece(segments: list[str], cuts: list[int]) -> None:
    text = "".join(segments)
    whole = PlaceholderRestorer(TABLE).restore(text)
    points = sorted({c % (len(text) + 1) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    r = PlaceholderRestorer(TABLE)
    streamed = "".join(r.feed(p) for p in pieces) + r.flush()
    assert streamed == whole


@settings(max_examples=200, deadline=None)
@given(segments=SEGMENTS, cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=12))
def test_property_json_mode_streaming_equals_one_piece(segments: list[str], cuts: list[int]) -> None:
    text = "".join(segments)
    whole = PlaceholderRestorer(TABLE, json_escape=True).restore(text)
    points = sorted({c % (len(text) + 1) for c in cuts})
    pieces = [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]
    r = PlaceholderRestorer(TABLE, json_escape=True)
    assert "".join(r.feed(p) for p in pieces) + r.flush() == whole
