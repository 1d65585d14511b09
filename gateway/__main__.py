"""The command line: ``pii-gateway serve | demo | policy``. Parses flags; all real work lives elsewhere."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import logs
from .detector import ModelMissing
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
    serve.add_argument(
        "--production",
        action="store_const",
        const=True,
        help="refuse unsafe defaults (env PII_GATEWAY_ENV=production)",
    )

    demo = commands.add_parser("demo", help="show the gateway at work on a built-in example, offline")
    _common(demo)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    flags: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    return load_settings(flags, config_file=args.config)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
    except SettingsError as exc:
        print(f"pii-gateway: {exc}", file=sys.stderr)
        return 2
    quiet_demo = args.command == "demo" and args.log_level is None
    logs.configure("warning" if quiet_demo else settings.log_level)
    try:
        if args.command == "serve":
            from .server import serve

            _run(serve(settings))
            return 0
        if args.command == "demo":
            from .demo import run_demo

            return int(_run(run_demo(settings)))
    except ModelMissing as exc:
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
