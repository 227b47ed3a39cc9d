"""A bounded load test of a running `bdh serve`: N clients x M requests over HTTP, then it stops by itself.

Every client optionally owns a session and continues it with each request; at the end each session's token
count must equal the sum of the `usage.total_tokens` of that client's requests (no turn lost or applied twice).
Requests alternate non-streaming and streaming (server-sent events, usage in the last chunk). Used by
`benchmarks/serve_bench.py` and the tests.

    stats = asyncio.run(load_test("http://127.0.0.1:8000", "m", clients=8, requests=4))
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time


def httpx_module():
    """The httpx module (installed as `httpx`, or as `httpx2` beside newer `openai` clients)."""
    try:
        import httpx
    except ModuleNotFoundError:
        import httpx2 as httpx
    return httpx


def percentiles(xs: list[float]) -> dict:
    """p50 / p90 / p99 / max (nearest rank) of `xs`, or None values when empty."""
    if not xs:
        return {"p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    s = sorted(xs)

    def rank(q: float) -> float:
        return s[min(len(s) - 1, max(0, int(round(q * len(s) + 0.5)) - 1))]

    return {"p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99), "max": s[-1], "mean": statistics.fmean(s)}


async def _completion(client, body: dict, stream: bool) -> dict:
    """(usage, text) of one completion; raises RuntimeError on an HTTP or in-stream error."""
    if not stream:
        r = await client.post("/v1/completions", json=body)
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        d = r.json()
        return {"usage": d["usage"], "text": d["choices"][0]["text"]}
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    text, usage = "", None
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            d = json.loads(line[6:])
            if "error" in d:
                raise RuntimeError(f"stream error: {d['error']['message']}")
            if d.get("usage"):
                usage = d["usage"]
            for c in d.get("choices", []):
                text += c.get("text") or ""
    if usage is None:
        raise RuntimeError("the stream ended without usage")
    return {"usage": usage, "text": text}


async def load_test(base_url: str, model: str, *, clients: int = 8, requests: int = 4, max_tokens: int = 16,
                    sessions: bool = True, stream: bool = True, api_key: str | None = None,
                    timeout: float = 300.0, temperature: float = 0.0) -> dict:
    """Run `clients` concurrent clients, each sending `requests` completions one after another; return counts,
    latency percentiles (ms), tokens/s and the sessions whose token count disagrees (`lost_sessions`)."""
    httpx = httpx_module()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    latencies: list[float] = []
    errors: list[str] = []
    lost: list[str] = []
    completion_tokens = 0

    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout, limits=limits) as client:

        async def one(c: int) -> None:
            nonlocal completion_tokens
            sid, expected = None, 0
            if sessions:
                r = await client.post("/v1/sessions", json={"model": model})
                if r.status_code != 200:
                    errors.append(f"client {c}: create session: HTTP {r.status_code}")
                    return
                sid = r.json()["id"]
            for i in range(requests):
                body = {"model": model, "prompt": f"Client {c}, request {i}: ", "max_tokens": max_tokens,
                        "temperature": temperature}
                if sid:
                    body["session"] = sid
                t0 = time.perf_counter()
                try:
                    out = await _completion(client, body, stream and i % 2 == 1)
                except (RuntimeError, httpx.HTTPError) as e:  # noqa: PERF203
                    errors.append(f"client {c} request {i}: {e}")
                    continue
                latencies.append((time.perf_counter() - t0) * 1000)
                expected += out["usage"]["total_tokens"]
                completion_tokens += out["usage"]["completion_tokens"]
            if sid:
                r = await client.get(f"/v1/sessions/{sid}")
                if r.status_code != 200 or r.json()["n_tokens"] != expected:
                    lost.append(sid)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(c) for c in range(clients)))
        seconds = time.perf_counter() - t0
    return {"clients": clients, "requests_per_client": requests, "max_tokens": max_tokens,
            "requests": clients * requests, "ok": len(latencies), "failed": len(errors), "errors": errors[:10],
            "sessions": clients if sessions else 0, "lost_sessions": len(lost), "seconds": seconds,
            "completion_tokens": completion_tokens, "tokens_per_s": completion_tokens / seconds if seconds else None,
            "latency_ms": percentiles(latencies)}
