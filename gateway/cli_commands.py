"""The command line's policy and API-key sub-commands: policy check/explain, keys create/list/revoke.

Each returns a process exit code. They print for people; nothing here is imported by the server.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .admin import explain, run_examples
from .detector import PresidioDetector
from .keys import KeyFileError, KeyRing, Role, parse_duration
from .policy import Policy, PolicyError, load_policy_dir, load_policy_file
from .redaction import Redactor
from .settings import Settings


def _detector(settings: Settings) -> PresidioDetector:
    return PresidioDetector(
        settings.nlp.model, settings.nlp.language, workers=0, timeout=120, disable=tuple(settings.nlp.disable)
    )


async def policy_check(settings: Settings, files: list[Path], run: bool = True) -> int:
    """Validate each file (file:line: field: problem), then run its examples. Non-zero on any failure.

    Languages are checked against the NLP engine these settings configure (``nlp.language``).
    """
    policies: list[tuple[Path, Policy]] = []
    failed = False
    for path in files:
        try:
            policies.append((path, load_policy_file(path, languages=[settings.nlp.language])))
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
        book = load_policy_dir(
            settings.resolved_policies_dir(), settings.default_policy, languages=[settings.nlp.language]
        )
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
        shown = f" {f.replacement}" if f.replacement is not None else ""
        print(
            f"  {f.entity_type:<18} {f.value!r:<32} score {f.score:.2f}  {f.recognizer:<24} -> {f.decision}{shown}"
            f"  ({f.outcome})"
        )
        if f.because is not None:
            print(f"  {'':<18} {'':<32} {'':<10}  {'':<24}    because {f.because}")
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
