"""The command line: ``pii-gateway serve | demo | policy``. Parses flags; all real work lives elsewhere."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import logs
from .crypto import CryptoError
from .detector import ModelMissing, keep_tldextract_offline
from .keys import KeyFileError
from .policy import PolicyError
from .settings import Settings, SettingsError, load_settings


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML file with settings (env PII_GATEWAY_CONFIG)")
    parser.add_argument(
        "--log-level", dest="log_level", help="debug, info, warning or error (env PII_GATEWAY_LOG_LEVEL)"
    )
    parser.add_argument("--data-dir", dest="data_dir", help="where local state lives (env PII_GATEWAY_DATA_DIR)")
    parser.add_argument(
        "--policies-dir", dest="policies_dir", help="folder of policy YAML (env PII_GATEWAY_POLICIES_DIR)"
    )
    parser.add_argument(
        "--nlp-model", dest="nlp.model", help="spaCy package or model path (env PII_GATEWAY_NLP__MODEL)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pii-gateway", description="A privacy gateway for LLM chat traffic.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    _common(serve)
    serve.add_argument("--host", help="address to listen on (env PII_GATEWAY_HOST; default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (env PII_GATEWAY_PORT; default 8080)")
    serve.add_argument(
        "--upstream",
        help="upstream base URL, e.g. https://api.openai.com/v1 (env PII_GATEWAY_UPSTREAM); "
        "without it, a built-in local echo upstream is used",
    )
    serve.add_argument(
        "--workers",
        dest="detector.workers",
        type=int,
        help="detector processes (env PII_GATEWAY_DETECTOR__WORKERS)",
    )
    serve.add_argument("--tls-cert", dest="tls.cert", help="serve HTTPS with this certificate (PEM)")
    serve.add_argument("--tls-key", dest="tls.key", help="the certificate's private key (PEM)")
    serve.add_argument("--master-key-file", dest="master_key_file", help="master keys, one base64 key per line")
    serve.add_argument(
        "--admin-port", dest="admin.port", type=int, help="serve /metrics on this port (env PII_GATEWAY_ADMIN__PORT)"
    )
    serve.add_argument(
        "--production",
        action="store_const",
        const=True,
        help="refuse unsafe defaults (env PII_GATEWAY_ENV=production)",
    )

    demo = commands.add_parser("demo", help="show the gateway at work on a built-in example, offline")
    _common(demo)

    policy = commands.add_parser("policy", help="check and try policies")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True)
    check = policy_commands.add_parser("check", help="validate policy files and run their examples")
    _common(check)
    check.add_argument("files", nargs="+", type=Path)
    check.add_argument("--schema-only", action="store_true", help="validate without running the examples")
    explain = policy_commands.add_parser("explain", help="show what a policy would do to a text")
    _common(explain)
    explain.add_argument("--policy", dest="policy_name", default=None, help="policy name (default: the default policy)")
    explain.add_argument("--json", action="store_true", help="machine-readable output")
    explain.add_argument("text")

    keys = commands.add_parser("keys", help="gateway API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key; it is shown once and stored hashed")
    _common(create)
    create.add_argument("--tenant", required=True)
    create.add_argument("--policy", dest="key_policy", default=None, help="policy bound to the key")
    create.add_argument("--role", choices=["client", "admin"], default="client")
    create.add_argument("--expires", default=None, help="lifetime such as 90d or 12h (default: no expiry)")
    create.add_argument("--description", default="")
    rotate = key_commands.add_parser("rotate", help="re-wrap every tenant data key under the current master key")
    _common(rotate)
    rotate.add_argument("--master-key-file", dest="master_key_file", help="file of master keys, first is current")
    rotate.add_argument("--generate", action="store_true", help="first add a new master key to the key file")
    master = key_commands.add_parser("master", help="show master keys and how many data keys each wraps")
    _common(master)
    master.add_argument("--master-key-file", dest="master_key_file")
    listing = key_commands.add_parser("list", help="list keys (never their secrets)")
    _common(listing)
    revoke = key_commands.add_parser("revoke", help="revoke a key by id")
    _common(revoke)
    revoke.add_argument("key_id")

    transcripts = commands.add_parser("transcripts", help="read, export, purge and forget transcripts")
    t_commands = transcripts.add_subparsers(dest="transcripts_command", required=True)
    for name, text in (("list", "list transcripts (metadata only)"), ("export", "export decrypted transcripts")):
        cmd = t_commands.add_parser(name, help=text)
        _common(cmd)
        cmd.add_argument("--master-key-file", dest="master_key_file")
        cmd.add_argument("--since", help="24h, 30d, or an ISO time")
        cmd.add_argument("--until")
        cmd.add_argument("--tenant")
        cmd.add_argument("--model")
        cmd.add_argument("--status", type=int)
        if name == "list":
            cmd.add_argument("--limit", type=int, default=100)
        else:
            cmd.add_argument("--format", choices=["jsonl"], default="jsonl")
            cmd.add_argument("--out", help="file to write (default: standard output)")
            cmd.add_argument("--progress", action="store_true", help="show progress even when not on a terminal")
    show = t_commands.add_parser("show", help="decrypt and show one transcript")
    _common(show)
    show.add_argument("--master-key-file", dest="master_key_file")
    show.add_argument("transcript_id")
    purge = t_commands.add_parser("purge", help="delete transcripts older than a duration")
    _common(purge)
    purge.add_argument("--master-key-file", dest="master_key_file")
    purge.add_argument("--older-than", required=True, help="e.g. 30d")
    forget = t_commands.add_parser("forget", help="crypto-shred a tenant: destroy its data key (and rows)")
    _common(forget)
    forget.add_argument("--master-key-file", dest="master_key_file")
    forget.add_argument("--tenant", required=True)
    forget.add_argument("--keep-rows", action="store_true", help="destroy the key but leave the (unreadable) rows")
    return parser


_COMMAND_ARGS = {
    "command", "config", "policy_command", "keys_command", "files", "schema_only", "policy_name", "json", "text",
    "tenant", "key_policy", "role", "expires", "description", "key_id", "generate", "transcripts_command",
    "since", "until", "model", "status", "limit", "format", "out", "progress", "transcript_id", "older_than",
    "keep_rows",
}  # fmt: skip


def _settings(args: argparse.Namespace) -> Settings:
    flags: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in _COMMAND_ARGS}
    return load_settings(flags, config_file=args.config)


def main(argv: Sequence[str] | None = None) -> int:
    keep_tldextract_offline()
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
    except SettingsError as exc:
        print(f"pii-gateway: {exc}", file=sys.stderr)
        return 2
    quiet = args.command != "serve" and args.log_level is None
    logs.configure("warning" if quiet else settings.log_level)
    try:
        if args.command == "serve":
            from .server import serve

            _run(serve(settings))
            return 0
        if args.command == "demo":
            from .demo import run_demo

            return int(_run(run_demo(settings)))
        if args.command == "policy":
            from . import cli_commands

            if args.policy_command == "check":
                return int(_run(cli_commands.policy_check(settings, args.files, run=not args.schema_only)))
            name = args.policy_name or settings.default_policy
            return int(_run(cli_commands.policy_explain(settings, name, args.text, args.json)))
        if args.command == "keys" and args.keys_command in ("rotate", "master"):
            from . import cli_transcripts

            if args.keys_command == "rotate":
                return int(_run(cli_transcripts.master_rotate(settings, args.generate)))
            return int(_run(cli_transcripts.master_status(settings)))
        if args.command == "keys":
            from . import cli_commands

            if args.keys_command == "create":
                return cli_commands.keys_create(
                    settings, args.tenant, args.key_policy, args.role, args.expires, args.description
                )
            if args.keys_command == "list":
                return cli_commands.keys_list(settings)
            return cli_commands.keys_revoke(settings, args.key_id)
        if args.command == "transcripts":
            from . import cli_transcripts as ct

            sub = args.transcripts_command
            if sub == "list":
                return int(_run(ct.transcripts_list(settings, args)))
            if sub == "show":
                return int(_run(ct.transcripts_show(settings, args.transcript_id)))
            if sub == "export":
                return int(_run(ct.transcripts_export(settings, args)))
            if sub == "purge":
                return int(_run(ct.transcripts_purge(settings, args.older_than)))
            return int(_run(ct.transcripts_forget(settings, args.tenant, args.keep_rows)))
    except (ModelMissing, CryptoError, SettingsError, PolicyError, KeyFileError) as exc:
        print(f"pii-gateway: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 2


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


if __name__ == "__main__":
    sys.exit(main())
