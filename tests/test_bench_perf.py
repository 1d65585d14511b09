"""The performance benchmark (bench/perf.py): its parts on small inputs, and a --quick run as a smoke test.

The smoke test asserts that the benchmark runs end to end and prints every table with every row; it
asserts no timing, since those depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from bench.perf import (
    BEGIN,
    END,
    LABELS,
    RELAY_TARGETS,
    Conversation,
    TextPool,
    chat_body,
    pct,
    process_tree,
    tree_rss,
    write_report,
)
from bench.perf_upstream import answer_text, completion, pieces

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(("text", "count"), [("abcdefghij", 3), ("abc", 7), ("x" * 700, 300), ("", 5)])
def test_pieces_are_exactly_count_and_join_to_the_echo(text: str, count: int) -> None:
    cut = pieces(text, count)
    assert len(cut) == count
    assert all(cut)
    if len(text) >= count:
        assert "".join(cut) == text


def test_the_fake_upstream_echoes_the_last_user_message() -> None:
    body = {"messages": [{"role": "user", "content": "first"}, {"role": "user", "content": "Hi <PERSON_1>"}]}
    assert answer_text(body) == "Understood. Hi <PERSON_1>"
    assert orjson.loads(completion(body))["choices"][0]["message"]["content"] == "Understood. Hi <PERSON_1>"


def test_percentiles_interpolate() -> None:
    assert pct([3.0, 1.0, 2.0], 50) == 2.0
    assert pct([0.0, 10.0], 90) == pytest.approx(9.0)
    assert pct([5.0], 99) == 5.0


def test_texts_are_about_700_characters_fresh_and_labelled() -> None:
    texts = TextPool(seed=3).texts(12)
    assert len({t.text for t in texts}) == 12
    for text in texts:
        assert 600 <= len(text.text) <= 1100
        assert text.spans
        for span in text.spans:
            value = text.text[span.start : span.end]
            assert value and value == value.strip("\n")


def test_a_conversation_resends_the_answers_it_got() -> None:
    conversation = Conversation(("one", "two", "three"))
    conversation.answers[1] = "restored answer"
    first = conversation.messages(1)
    assert [m["role"] for m in first] == ["system", "user"]
    third = conversation.messages(3)
    assert [m["role"] for m in third] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert third[2]["content"] == "restored answer"
    assert third[4]["content"] == "Understood. two"  # a turn not run: the floor's answer stands in
    body = orjson.loads(chat_body(third, chunks=300))
    assert body["stream"] is True and body["max_tokens"] == 300


def test_rss_is_summed_over_the_process_tree() -> None:
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as child:
        try:
            tree = process_tree(os.getpid())
            assert child.pid in tree
            assert tree_rss(tree) > tree_rss([os.getpid()]) > 0
        finally:
            child.kill()


def test_the_report_replaces_only_the_generated_part(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text(f"# Performance\n\nAnalysis above.\n\n{BEGIN}\nold tables\n{END}\n\nAnalysis below.\n")
    write_report(doc, f"{BEGIN}\nnew tables\n{END}\n")
    text = doc.read_text()
    assert "old tables" not in text
    assert "Analysis above." in text and "new tables" in text and "Analysis below." in text


def test_quick_run_prints_every_table_with_every_row(tmp_path: Path) -> None:
    out = tmp_path / "performance.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench.perf", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = done.stdout
    assert out.read_text().count(BEGIN) == 1
    for heading in (
        "## Targets of the issue",
        "## Detection time",
        "## Fresh ~700-character messages",
        "-turn conversations",
        "## Streams of",
        "prompt analysed before (the relay)",
        "## Throughput at concurrency 8 with detection",
    ):
        assert heading in report
    fresh = report.split("## Fresh")[1].split("\n## ")[0]
    streams = report.split("## Streams of")[1].split("\n## ")[0]
    relay = report.split("prompt analysed before (the relay)")[1].split("\n## ")[0]
    for concurrency in (1, 8, 32):
        for key in ("direct", "proxy", "gateway", "stock", "litellm"):
            assert f"| {concurrency} | {LABELS[key]} |" in fresh
            assert f"| {concurrency} | {LABELS[key]} |" in streams
            assert (f"| {concurrency} | {LABELS[key]} |" in relay) == (key in RELAY_TARGETS)
    assert f"| 8 | {LABELS['gateway_1w']} |" in fresh
    # The gateway gave the answer back as the client sent it: the personal data was put back.
    startup = report.split("## Targets")[0]
    gateway_row = next(line for line in startup.splitlines() if line.startswith(f"| {LABELS['gateway']} |"))
    assert "| as sent |" in gateway_row
    assert "errors:" not in fresh and "errors:" not in streams and "errors:" not in relay
    # The stream-throughput bar shows both figures, and is judged on the relay.
    targets = report.split("## Targets of the issue")[1].split("\n## ")[0]
    bar = next(line for line in targets.splitlines() if "-chunk streams at concurrency 8" in line)
    assert "judged on the relay" in bar and "| relay " in bar and "; fresh prompt " in bar
