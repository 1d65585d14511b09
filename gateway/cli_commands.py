"""The command line's sub-commands beyond serve and demo: policy check/explain, keys create/list/revoke.

Each returns a process exit code. They print for people; nothing here is imported by the server.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
import time
from argparse import Namespace
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .admin import explain, run_examples
from .crypto import CryptoError, key_id_of, load_key_provider
from .detector import PresidioDetector
from .envelope import DataKeys
from .keys import KeyFileError, KeyRing, Role, parse_duration
from .policy import Policy, PolicyError, load_policy_dir, load_policy_file
from .redaction import Redactor
from .settings import Settings
from .store import Query, TranscriptRow, TranscriptStore, open_store
from .transcripts import TranscriptReader


def _detector(settings: Settings) -> PresidioDetector:
    return PresidioDetector(
        settings.nlp.model, settings.nlp.language, workers=0, timeout=120, disable=tuple(settings.nlp.disable)
    )


async def policy_check(settings: Settings, files: list[Path], run: bool = True) -> int:
    """Validate each file (file:line: field: problem), then run its examples. Non-zero on any failure."""
    policies: list[tuple[Path, Policy]] = []
    failed = False
    for path in files:
        try:
            policies.append((path, load_policy_file(path)))
            print(f"{path}: schema ok")
        except PolicyError as exc:
            print(str(exc), file=sys.stderr)
            failed = True
    if run and policies:
        detector = _detector(settings)
        await detector.start()
        try:
            redactor = Redactor(detector, b"policy-check")
            for path, policy in policies:
                results = await run_examples(policy, detector, redactor)
                bad = [r for r in results if r.problems]
                for r in bad:
                    for problem in r.problems:
                        print(f"{path}: examples[{r.index}]: {problem}", file=sys.stderr)
                print(f"{path}: {len(results) - len(bad)}/{len(results)} examples pass")
                failed = failed or bool(bad)
        finally:
            await detector.close()
    return 1 if failed else 0


async def policy_explain(settings: Settings, name: str, text: str, as_json: bool) -> int:
    try:
        book = load_policy_dir(settings.resolved_policies_dir(), settings.default_policy)
    except PolicyError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    policy = book.policies.get(name)
    if policy is None:
        print(
            f"no policy named '{name}' in {settings.resolved_policies_dir()}: {sorted(book.policies)}", file=sys.stderr
        )
        return 2
    detector = _detector(settings)
    await detector.start()
    try:
        result = await explain(text, policy, detector, Redactor(detector, b"policy-explain"))
    finally:
        await detector.close()
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return 0
    print(f"policy: {result.policy}")
    if not result.findings:
        print("no findings")
    for f in result.findings:
        print(f"  {f.entity_type:<18} {f.value!r:<32} score {f.score:.2f}  {f.recognizer:<24} -> {f.decision}")
    if result.blocked:
        print(f"result: BLOCKED (the request would be refused: {', '.join(result.blocked)})")
    else:
        print(f"result: {result.output}")
    return 0


def keys_create(
    settings: Settings, tenant: str, policy: str | None, role: Role, expires: str | None, description: str
) -> int:
    path = settings.resolved_keys_file()
    if policy is not None:
        try:
            book = load_policy_dir(settings.resolved_policies_dir(), settings.default_policy)
        except PolicyError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        if policy not in book.policies:
            print(f"no policy named '{policy}': {sorted(book.policies)}", file=sys.stderr)
            return 2
    try:
        ring, key = KeyRing.load(path).create(
            tenant, policy, role, parse_duration(expires) if expires else None, description
        )
        ring.save(path)
    except (KeyFileError, ValueError) as exc:
        print(f"pii-gateway: {exc}", file=sys.stderr)
        return 2
    print(key)
    print(f"(shown once; stored hashed in {path}; tenant={tenant} policy={policy or '-'} role={role})", file=sys.stderr)
    return 0


def keys_list(settings: Settings) -> int:
    try:
        ring = KeyRing.load(settings.resolved_keys_file())
    except KeyFileError as exc:
        print(f"pii-gateway: {exc}", file=sys.stderr)
        return 2
    now = time.time()
    print(f"{'id':<10} {'tenant':<16} {'policy':<12} {'role':<7} {'state':<8} description")
    for r in ring.records.values():
        state = "revoked" if r.revoked else ("expired" if not r.usable(now) else "active")
        print(f"{r.id:<10} {r.tenant:<16} {r.policy or '-':<12} {r.role:<7} {state:<8} {r.description}")
    return 0


def keys_revoke(settings: Settings, key_id: str) -> int:
    path = settings.resolved_keys_file()
    try:
        KeyRing.load(path).revoke(key_id).save(path)
    except KeyFileError as exc:
        print(f"pii-gateway: {exc}", file=sys.stderr)
        return 2
    print(f"revoked {key_id}")
    return 0


# --- transcripts and master keys (need the master key) ------------------------------------------


def _key_file(settings: Settings) -> Path | None:
    if settings.master_key is not None:
        return None
    return settings.master_key_file or settings.data_dir / "master.key"


async def _open(settings: Settings) -> tuple[TranscriptStore, DataKeys]:
    provider, _ = load_key_provider(
        settings.master_key.reveal() if settings.master_key else None,
        settings.master_key_file,
        settings.data_dir,
        settings.production,
    )
    store = open_store(settings.transcripts.dsn.reveal() if settings.transcripts.dsn else None, settings.data_dir)
    await store.open()
    return store, DataKeys(store, provider)


def parse_time(text: str | None) -> float | None:
    """``24h``/``30d`` (ago) or an ISO 8601 time."""
    if text is None:
        return None
    try:
        return time.time() - parse_duration(text)
    except ValueError:
        pass
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _query(args: Namespace, limit: int) -> Query:
    return Query(
        since=parse_time(args.since), until=parse_time(args.until), tenant=args.tenant, model=args.model,
        status=args.status, limit=limit,
    )  # fmt: skip


def _meta(row: TranscriptRow) -> dict[str, Any]:
    return {k: v for k, v in row.__dict__.items() if k != "content"} | {"has_content": row.content is not None}


async def transcripts_list(settings: Settings, args: Namespace) -> int:
    store, _ = await _open(settings)
    try:
        rows = await store.query(_query(args, args.limit))
    finally:
        await store.close()
    print(f"{'id':<28} {'time (UTC)':<20} {'tenant':<12} {'model':<16} {'status':<6} {'policy':<10} entities")
    for r in rows:
        when = datetime.fromtimestamp(r.created, UTC).strftime("%Y-%m-%d %H:%M:%S")
        entities = ",".join(f"{k}:{v}" for k, v in sorted(r.entity_counts.items()))
        model, policy = r.model or "-", r.policy or "-"
        print(f"{r.id:<28} {when:<20} {r.tenant:<12} {model:<16} {r.status:<6} {policy:<10} {entities}")
    return 0


async def transcripts_show(settings: Settings, transcript_id: str) -> int:
    store, keys = await _open(settings)
    try:
        row = await store.get(transcript_id)
        if row is None:
            print(f"no transcript {transcript_id}", file=sys.stderr)
            return 1
        try:
            content = await TranscriptReader(keys).content(row)
        except CryptoError as exc:
            print(f"{transcript_id}: cannot decrypt: {exc}", file=sys.stderr)
            return 1
    finally:
        await store.close()
    print(json.dumps(_meta(row) | {"content": content}, indent=2, ensure_ascii=False))
    return 0


async def transcripts_export(settings: Settings, args: Namespace) -> int:
    store, keys = await _open(settings)
    reader = TranscriptReader(keys)
    # A command-line tool writing its own output file: blocking writes are fine here.
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115, ASYNC230
    exported = failed = 0
    started = time.monotonic()
    try:
        query = _query(args, 500)
        while True:
            rows = await store.query(query)
            if not rows:
                break
            for row in rows:
                try:
                    content: Any = await reader.content(row)
                except CryptoError as exc:
                    content, failed = {"error": str(exc)}, failed + 1
                out.write(json.dumps(_meta(row) | {"content": content}, ensure_ascii=False) + "\n")
                exported += 1
            query = replace(query, after=(rows[-1].created, rows[-1].id))
            if sys.stderr.isatty() or args.progress:
                rate = exported / max(time.monotonic() - started, 1e-6)
                print(f"\rexported {exported} transcripts ({rate:.0f}/s)", end="", file=sys.stderr, flush=True)
    finally:
        if out is not sys.stdout:
            out.close()
        await store.close()
    print(f"\rexported {exported} transcripts; {failed} could not be decrypted", file=sys.stderr)
    return 0


async def transcripts_purge(settings: Settings, older_than: str) -> int:
    store, _ = await _open(settings)
    try:
        purged = await store.purge(time.time() - parse_duration(older_than))
    finally:
        await store.close()
    print(f"purged {purged} transcripts older than {older_than}")
    return 0


async def transcripts_forget(settings: Settings, tenant: str, keep_rows: bool) -> int:
    store, keys = await _open(settings)
    try:
        destroyed = await keys.destroy(tenant)
        deleted = 0 if keep_rows else await store.delete_tenant(tenant)
    finally:
        await store.close()
    print(
        f"tenant {tenant}: data key {'destroyed' if destroyed else 'was already gone'}; "
        f"its transcripts, backups included, can no longer be decrypted; {deleted} rows deleted"
    )
    return 0


async def master_rotate(settings: Settings, generate: bool) -> int:
    if generate:
        path = _key_file(settings)
        if path is None:
            print(
                "master keys come from PII_GATEWAY_MASTER_KEY: put the new key first there, then rotate",
                file=sys.stderr,
            )
            return 2
        new = base64.b64encode(secrets.token_bytes(32)).decode()
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(new + "\n" + old)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        print(f"new master key {key_id_of(base64.b64decode(new))} written first in {path}; older keys kept")
    store, keys = await _open(settings)
    try:
        done, already = await keys.rewrap_all()
        counts = await keys.wrapped_by()
    finally:
        await store.close()
    print(f"re-wrapped {done} data keys under {keys.provider.current_id} ({already} already were)")
    for kid, n in sorted(counts.items()):
        print(f"  {kid}: {n} data keys")
    print("A master key that wraps no data key can be retired: remove it from the key list.")
    return 0


async def master_status(settings: Settings) -> int:
    store, keys = await _open(settings)
    try:
        counts = await keys.wrapped_by()
    finally:
        await store.close()
    for kid in keys.provider.key_ids():
        mark = " (current)" if kid == keys.provider.current_id else ""
        print(f"{kid}{mark}: wraps {counts.get(kid, 0)} data keys")
    return 0
