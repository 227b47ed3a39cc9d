"""`bdh serve`: continuous batching equals decoding alone, the real server through the `openai` client, sessions
that survive SIGKILL exactly, bad input -> 4xx JSON, a bounded load test."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from bdh import BDH, load_model
from bdh.baselines import GPT, GPTConfig
from bdh.generation import SamplingParams, prefill_in_pieces
from bdh.tokenization import ByteTokenizer

from conftest import stop_process, tiny_config

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from bdh.serve.engine import Done, Engine, Failed, Job, Token  # noqa: E402
from bdh.serve.loadtest import httpx_module, load_test  # noqa: E402
from bdh.checkpoint import model_fingerprint  # noqa: E402
from bdh.serve.sessions import SessionStore  # noqa: E402

httpx = httpx_module()

KEY = "test-key-123"


# ----------------------------------------------------------------------------------------------- models
def tiny_gpt(**kw) -> GPT:
    base = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=256, block_size=64)
    base.update(kw)
    return GPT(GPTConfig(**base)).eval()


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """A tiny BDH with damping (the lazy decay path) and a tiny GPT, saved as model directories."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    BDH(tiny_config(damping="alibi")).save_pretrained(root / "bdh", ByteTokenizer())
    torch.manual_seed(1)
    tiny_gpt().save_pretrained(root / "gpt", ByteTokenizer())
    return {"bdh": root / "bdh", "gpt": root / "gpt"}


def solo_greedy(model, turns: list[tuple[list[int], int]]):
    """The uninterrupted reference with the Python API: per turn, prefill the prompt (continuing the state),
    then greedy tokens each stepped; returns per turn (tokens, logprobs) and the final logits (V,)."""
    state, out, last = None, [], None
    with torch.inference_mode():
        for prompt, n in turns:
            if prompt:
                last, state = prefill_in_pieces(model, torch.tensor([prompt]), state=state)
                last = last[0]
            toks, lps = [], []
            for _ in range(n):
                t = int(last.argmax())
                toks.append(t)
                lps.append(float(torch.log_softmax(last.float(), -1)[t]))
                lg, state = model.step(torch.tensor([t]), state)
                last = lg[0]
            out.append((toks, lps))
    return out, last


# ----------------------------------------------------------------------------------------------- batching
@pytest.mark.parametrize("kind", ["bdh", "gpt"])
def test_rows_at_different_positions_step_as_if_alone(kind):
    """A batch whose rows sit at different positions (joined at different times, one leaving) gives each row
    the logits it has alone."""
    torch.manual_seed(0)
    model = BDH(tiny_config(damping="alibi")).eval() if kind == "bdh" else tiny_gpt()
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 256, (1, n), generator=g) for n in (3, 11, 7)]
    feed = torch.randint(0, 256, (3, 12), generator=g)
    with torch.inference_mode():
        alone = []
        for b, p in enumerate(prompts):
            _, st = model.prefill(p)
            alone.append([model.step(feed[b, t : t + 1], st, inplace=True)[0][0] for t in range(12)])
        # continuous batching: row 0 alone for 2 steps, row 1 joins, row 2 joins 2 steps later, row 1 leaves
        _, s0 = model.prefill(prompts[0])
        _, s1 = model.prefill(prompts[1])
        _, s2 = model.prefill(prompts[2])
        rows, state, t_of = [0], type(s0).cat([s0]), {0: 0, 1: 0, 2: 0}
        for step in range(9):
            if step == 2:
                rows, state = rows + [1], type(state).cat([state, s1])
            if step == 4:
                rows, state = rows + [2], type(state).cat([state, s2])
            if step == 7:
                keep = [i for i, r in enumerate(rows) if r != 1]
                rows, state = [rows[i] for i in keep], state.select(keep)
            ids = torch.stack([feed[r, t_of[r]] for r in rows])
            logits, state = model.step(ids, state, inplace=True)
            for i, r in enumerate(rows):
                assert (logits[i] - alone[r][t_of[r]]).abs().max().item() < 1e-5, (kind, step, r)
                t_of[r] += 1
    if kind == "gpt":  # a row taken out of the batch holds no padding
        one = state.select([0])
        assert one.length == int(one.pos[0])


@pytest.mark.parametrize("kind", ["bdh", "gpt"])
def test_engine_continuous_batching_equals_each_request_alone(model_dirs, kind):
    model = load_model(model_dirs[kind])
    tok = model.tokenizer
    prompts = ["a", "Hello there", "The quick brown fox", "xy", "0123456789abcdef", "Q"]
    max_tokens = [9, 4, 7, 12, 3, 6]
    engine = Engine(model, tok, max_batch=3, name=kind).start()
    events = {i: [] for i in range(len(prompts))}
    finished = threading.Semaphore(0)

    def emitter(i):
        def emit(ev):
            events[i].append(ev)
            if not isinstance(ev, Token):
                finished.release()
        return emit

    gone = []  # a client that goes away after 2 tokens: its row leaves the batch, nothing more is sent

    def leave(ev):
        gone.append(ev)
        if len(gone) == 2:
            quitter.cancelled.set()

    quitter = Job(tok.encode("bye"), SamplingParams(0.0), 50, leave, keep_state=True)
    try:
        engine.submit(quitter)
        for i, (p, n) in enumerate(zip(prompts, max_tokens)):
            engine.submit(Job(tok.encode(p), SamplingParams(0.0), n, emitter(i), logprobs=0, keep_state=i % 2 == 0))
        for _ in prompts:
            assert finished.acquire(timeout=60)
    finally:
        engine.stop()
    assert len(gone) == 2 and all(isinstance(e, Token) for e in gone)
    assert engine.stats["max_batch_seen"] == 3  # rows joined a running batch
    for i, (p, n) in enumerate(zip(prompts, max_tokens)):
        toks = [e for e in events[i] if isinstance(e, Token)]
        done = events[i][-1]
        assert isinstance(done, Done) and done.finish_reason == "length" and done.completion_tokens == n
        ((want_toks, want_lps),), last = solo_greedy(model, [(tok.encode(p), n)])
        assert [t.token_id for t in toks] == want_toks
        assert max(abs(t.logprob - w) for t, w in zip(toks, want_lps)) < 1e-5
        if i % 2 == 0:  # kept state: after prompt + every generated token
            assert int(done.state.pos[0]) == len(tok.encode(p)) + n
            assert (done.logits - last).abs().max().item() < 1e-5
        else:
            assert done.state is None


def test_engine_refuses_positions_beyond_learned_embeddings():
    """A GPT with learned positions ends at block_size: a request that would pass it is refused, not run."""
    model = tiny_gpt(positions="learned", block_size=16)
    engine = Engine(model, ByteTokenizer(), max_batch=2).start()
    got = []
    done = threading.Semaphore(0)

    def emit(ev):
        got.append(ev)
        if not isinstance(ev, Token):
            done.release()

    try:
        engine.submit(Job(list(b"0123456789"), SamplingParams(0.0), 7, emit))  # 10 + 7 > 16
        engine.submit(Job(list(b"0123456789"), SamplingParams(0.0), 6, emit))  # 10 + 6 = 16: fine
        assert done.acquire(timeout=30) and done.acquire(timeout=30)
    finally:
        engine.stop()
    failed = [e for e in got if isinstance(e, Failed)]
    assert len(failed) == 1 and failed[0].status == 400 and failed[0].code == "context_length_exceeded"
    assert [e.completion_tokens for e in got if isinstance(e, Done)] == [6]


def test_session_store_lru_eviction_and_reload(model_dirs, tmp_path):
    model = load_model(model_dirs["bdh"])
    one = sum(t.numel() * t.element_size() for t in model.state_to_tensors(model.init_state(1)).values())
    store = SessionStore(tmp_path, {"m": model}, {"m": model_fingerprint(model_dirs["bdh"])}, memory_cap=2 * one + 100)
    ids = [store.create("m")["id"] for _ in range(4)]
    assert store.stats()["memory_bytes"] <= 2 * one + 100 and store.stats()["evictions"] == 2
    # give the first (evicted) session a real state, then read it back from disk after eviction
    with torch.inference_mode():
        lg, st = model.prefill(torch.tensor([list(b"persist me")]))
    held = store.acquire(ids[0], "m")
    store.commit(held, st, lg[0, -1], added_tokens=10)
    for sid in ids[1:]:
        store.release(store.acquire(sid, "m").id)  # touch the others: the first is evicted again
    assert not store.info(ids[0])["in_memory"]
    back = store.acquire(ids[0], "m")
    assert back.n_tokens == 10 and torch.equal(back.logits, lg[0, -1])
    assert all(torch.equal(a, b) for a, b in zip(back.state.rho, st.rho)) and int(back.state.pos[0]) == 10
    with pytest.raises(Exception, match="in use"):
        store.acquire(ids[0], "m")
    store.release(ids[0])
    fork = store.fork(ids[0])
    assert fork["n_tokens"] == 10 and fork["id"] != ids[0]
    store.delete(ids[0])
    assert not (tmp_path / f"{ids[0]}.safetensors").exists()
    # a fresh store (a restarted server) finds the sessions on disk
    again = SessionStore(tmp_path, {"m": model}, {"m": model_fingerprint(model_dirs["bdh"])})
    assert {s["id"] for s in again.list()} == set(ids[1:]) | {fork["id"]}
    other = SessionStore(tmp_path, {"m": model}, {"m": "other weights"})
    with pytest.raises(Exception, match="other weights"):
        other.acquire(fork["id"], "m")


# ----------------------------------------------------------------------------------------------- the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProc:
    """`python -m bdh serve` as a subprocess on a free loopback port."""

    def __init__(self, model_dirs, sessions_dir, preexec_fn=None):
        self.args = [sys.executable, "-m", "bdh", "serve", "--model", f"bdh={model_dirs['bdh']}",
                     "--model", f"gpt={model_dirs['gpt']}", "--sessions-dir", str(sessions_dir), "--api-key", KEY,
                     "--threads", "1", "--max-batch", "8", "--max-prompt-tokens", "64", "--max-tokens", "64",
                     "--max-body-bytes", "4096"]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc, self.preexec_fn = None, preexec_fn

    def start(self) -> "ServerProc":
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(self.args + ["--port", str(self.port)], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, preexec_fn=self.preexec_fn)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not start in 60 s")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc)


@pytest.fixture(scope="module")
def server(model_dirs, tmp_path_factory):
    s = ServerProc(model_dirs, tmp_path_factory.mktemp("sessions")).start()
    yield s
    s.stop()


def client(server) -> "openai.OpenAI":
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def http(server) -> "httpx.Client":
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)


def test_openai_client_completions_chat_and_streaming(server, model_dirs):
    c = client(server)
    assert {m.id for m in c.models.list().data} == {"bdh", "gpt"}
    for name in ("bdh", "gpt"):
        model = load_model(model_dirs[name])
        r = c.completions.create(model=name, prompt="Hello", max_tokens=8, temperature=0, logprobs=2)
        ((want, lps),), _ = solo_greedy(model, [(list(b"Hello"), 8)])
        assert r.object == "text_completion" and r.choices[0].finish_reason == "length"
        assert r.usage.prompt_tokens == 5 and r.usage.completion_tokens == 8 and r.usage.total_tokens == 13
        assert r.choices[0].text == bytes(want).decode("utf-8", "replace")
        got = r.choices[0].logprobs.token_logprobs
        assert max(abs(a - b) for a, b in zip(got, lps)) < 1e-5
        assert all(len(t) >= 1 for t in r.choices[0].logprobs.top_logprobs)
        # streaming gives the same text in pieces, then usage
        chunks = list(c.completions.create(model=name, prompt="Hello", max_tokens=8, temperature=0, stream=True,
                                           stream_options={"include_usage": True}))
        assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == r.choices[0].text
        assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
        assert chunks[-1].usage.completion_tokens == 8
        # chat: the template's prompt, a reply of at most max_tokens, streaming equal to non-streaming
        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
        ch = c.chat.completions.create(model=name, messages=msgs, max_tokens=6, temperature=0, logprobs=True,
                                       top_logprobs=2)
        prompt = list(b"System: Be brief.\nUser: Hi!\nAssistant:")
        assert ch.object == "chat.completion" and ch.usage.prompt_tokens == len(prompt)
        assert ch.choices[0].message.role == "assistant" and ch.choices[0].finish_reason in ("stop", "length")
        assert len(ch.choices[0].logprobs.content) == ch.usage.completion_tokens
        parts = list(c.chat.completions.create(model=name, messages=msgs, max_tokens=6, temperature=0, stream=True))
        assert parts[0].choices[0].delta.role == "assistant"
        assert "".join(p.choices[0].delta.content or "" for p in parts) == ch.choices[0].message.content
        # sampling with a seed is reproducible
        a = c.completions.create(model=name, prompt="x", max_tokens=10, temperature=1.0, seed=7)
        b = c.completions.create(model=name, prompt="x", max_tokens=10, temperature=1.0, seed=7)
        assert a.choices[0].text == b.choices[0].text


def test_chat_session_continues_without_resending_history(server, model_dirs):
    c = client(server)
    r1 = c.chat.completions.create(model="bdh", messages=[{"role": "user", "content": "One"}], max_tokens=5,
                                   temperature=0, extra_body={"session": "new"}, stop=["\n"])
    sess = r1.model_extra["session"]
    n1 = r1.usage.prompt_tokens + r1.usage.completion_tokens
    assert sess["n_tokens"] == n1 and sess["model"] == "bdh"
    r2 = c.chat.completions.create(model="bdh", messages=[{"role": "user", "content": "Two"}], max_tokens=5,
                                   temperature=0, extra_body={"session": sess["id"]})
    assert r2.usage.prompt_tokens == len(b"User: Two\nAssistant:")  # only the new message is prefilled
    assert r2.model_extra["session"]["n_tokens"] == n1 + r2.usage.prompt_tokens + r2.usage.completion_tokens
    with http(server) as h:
        assert h.get(f"/v1/sessions/{sess['id']}").json()["n_tokens"] == r2.model_extra["session"]["n_tokens"]
        listed = h.get("/v1/sessions", params={"model": "bdh"}).json()["data"]
        assert sess["id"] in {x["id"] for x in listed} and all(x["model"] == "bdh" for x in listed)


def test_sessions_survive_sigkill_exactly(server, model_dirs):
    """Continue a session, fork it, finish the fork (uninterrupted), SIGKILL the server, restart it on the same
    sessions dir and finish the original: the same tokens, logprobs and logits, equal to the Python API's."""
    turns = [("Hello", 5), (" world", 4), ("!", 6)]
    c = client(server)
    ids, h = {}, http(server)
    for name in ("bdh", "gpt"):
        sid = h.post("/v1/sessions", json={"model": name}).json()["id"]
        for prompt, n in turns[:2]:
            r = c.completions.create(model=name, prompt=prompt, max_tokens=n, temperature=0,
                                     extra_body={"session": sid})
            assert r.model_extra["session"]["id"] == sid
        fork = h.post(f"/v1/sessions/{sid}/fork").json()["id"]
        r = c.completions.create(model=name, prompt=turns[2][0], max_tokens=turns[2][1], temperature=0, logprobs=0,
                                 extra_body={"session": fork})
        ids[name] = (sid, r.choices[0].text, r.choices[0].logprobs.token_logprobs,
                     h.get(f"/v1/sessions/{fork}/logits").json())
    h.close()
    server.kill()
    server.start()
    c, h = client(server), http(server)
    for name, (sid, text, lps, fork_logits) in ids.items():
        r = c.completions.create(model=name, prompt=turns[2][0], max_tokens=turns[2][1], temperature=0, logprobs=0,
                                 extra_body={"session": sid})
        after = h.get(f"/v1/sessions/{sid}/logits").json()
        assert r.choices[0].text == text
        assert r.choices[0].logprobs.token_logprobs == lps  # exactly: the state was saved exactly
        assert after["logits"] == fork_logits["logits"] and after["n_tokens"] == fork_logits["n_tokens"]
        want, last = solo_greedy(load_model(model_dirs[name]), [(list(p.encode()), n) for p, n in turns])
        assert max(abs(a - b) for a, b in zip(lps, want[2][1])) < 1e-5
        assert (torch.tensor(after["logits"]) - last).abs().max().item() < 1e-4
        assert after["n_tokens"] == sum(len(p) + n for p, n in turns)
    h.close()


def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(server):
    h = http(server)
    ok = {"model": "bdh", "prompt": "hi", "max_tokens": 2}

    def err(r, status, code=None):
        assert r.status_code == status, r.text
        e = r.json()["error"]
        assert isinstance(e["message"], str) and e["message"] and "type" in e
        if code:
            assert e["code"] == code, e

    err(h.post("/v1/completions", content=b"{not json"), 400, "invalid_json")
    err(h.post("/v1/completions", json={**ok, "model": "nope"}), 404, "model_not_found")
    err(h.post("/v1/completions", json={**ok, "session": "sess_" + "0" * 24}), 404, "session_not_found")
    err(h.post("/v1/completions", json={**ok, "session": "../../etc/passwd"}), 404, "session_not_found")
    err(h.get("/v1/sessions/sess_nope"), 404, "session_not_found")
    err(h.post("/v1/completions", json={**ok, "prompt": "x" * 65}), 400, "context_length_exceeded")
    err(h.post("/v1/completions", json={**ok, "prompt": [300]}), 400)
    err(h.post("/v1/completions", json={**ok, "prompt": "x" * 5000}), 413, "request_too_large")
    err(h.post("/v1/completions", json={**ok, "max_tokens": 65}), 400, "max_tokens_exceeded")
    err(h.post("/v1/completions", json={**ok, "max_tokens": -1}), 400)
    err(h.post("/v1/completions", json={**ok, "temperature": "hot"}), 400)
    err(h.post("/v1/completions", json={**ok, "n": 2}), 400)
    err(h.post("/v1/completions", json={"model": "bdh"}), 400)
    err(h.post("/v1/completions", json={**ok, "prompt": ""}), 400)
    err(h.post("/v1/chat/completions", json={"model": "bdh", "messages": []}), 400)
    err(h.post("/v1/chat/completions", json={"model": "bdh", "messages": [{"role": "robot", "content": "x"}]}), 400)
    err(h.post("/v1/sessions", json={"model": "nope"}), 404, "model_not_found")
    err(h.get("/v1/nothing-here"), 404)
    err(httpx.post(server.url + "/v1/completions", json=ok), 401, "invalid_api_key")
    err(httpx.post(server.url + "/v1/completions", json=ok, headers={"Authorization": "Bearer wrong"}), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    # a session belongs to one model
    sid = h.post("/v1/sessions", json={"model": "gpt"}).json()["id"]
    err(h.post("/v1/completions", json={**ok, "session": sid}), 400, "session_model")
    # a streamed turn of a session: the last chunk carries the saved session
    with h.stream("POST", "/v1/completions", json={"model": "gpt", "prompt": "abc", "max_tokens": 6,
                                                    "stream": True, "session": sid}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {")]
    assert lines[-1]["choices"][0]["finish_reason"] == "length" and lines[-1]["session"]["n_tokens"] == 3 + 6
    r = h.post("/v1/completions", json={**ok, "model": "gpt", "session": sid})
    assert r.status_code == 200 and r.json()["session"]["n_tokens"] == 9 + 2 + 2
    assert h.delete(f"/v1/sessions/{sid}").json()["deleted"] is True
    err(h.delete(f"/v1/sessions/{sid}"), 404)
    r = h.post("/v1/completions", json=ok)  # still serving
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    assert h.get("/health").json()["status"] == "ok"
    h.close()


def test_bounded_load_test_loses_nothing(server):
    stats = asyncio.run(load_test(server.url, "bdh", clients=6, requests=3, max_tokens=8, api_key=KEY))
    assert stats["failed"] == 0 and stats["ok"] == 18, stats["errors"]
    assert stats["lost_sessions"] == 0 and stats["completion_tokens"] == 18 * 8
    lat = stats["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    health = httpx.get(server.url + "/health").json()
    assert health["models"]["bdh"]["max_batch_seen"] > 1  # concurrent requests were stepped together


def test_cli_errors_are_one_line(tmp_path, capsys):
    from bdh.cli import main

    assert main(["serve", "--model", str(tmp_path / "missing"), "--sessions-dir", str(tmp_path / "s"),
                 "--port", "0"]) == 1  # (the port is bound first: 8000 may be taken on this machine)
    err = capsys.readouterr().err.strip()
    assert err.startswith("bdh serve: error:") and "missing" in err and "\n" not in err
    with pytest.raises(SystemExit):
        main(["serve", "--model", str(tmp_path), "--port", "70000"])


# ----------------------------------------------------------------------------------------------- issue 23
def _error(r, status: int, code: str | None = None, *words: str) -> dict:
    """The server's JSON error body of a response of `status`, whose message names every one of `words`."""
    assert r.status_code == status, r.text
    e = r.json()["error"]
    assert set(e) == {"message", "type", "param", "code"}, e
    if code is not None:
        assert e["code"] == code, e
    for w in words:
        assert w in e["message"], (w, e)
    return e


def test_lone_surrogates_are_400_naming_the_field(server):
    """JSON may escape half a surrogate pair ("\\ud800"), which is no text: before, 500 "internal error:
    ValueError" (the tokenizer) or the value taken; now 400 naming the field and the character."""
    h = http(server)
    bad = '"a\\ud800b"'  # the JSON escape, sent as written: a client's JSON encoder refuses the str
    cases = [
        ("/v1/completions", '{"model": "bdh", "max_tokens": 2, "prompt": %s}', "prompt"),
        ("/v1/completions", '{"model": "bdh", "max_tokens": 2, "prompt": [%s]}', "prompt.0"),
        ("/v1/completions", '{"model": "bdh", "max_tokens": 2, "prompt": "ab", "stop": [%s]}', "stop.0"),
        ("/v1/completions", '{"model": "bdh", "max_tokens": 2, "prompt": "ab", "session": %s}', "session"),
        ("/v1/completions", '{"model": %s, "max_tokens": 2, "prompt": "ab"}', "model"),
        ("/v1/chat/completions", '{"model": "bdh", "max_tokens": 2, "messages": [{"role": "user", "content": %s}]}',
         "messages.0.content"),
        ("/v1/chat/completions", '{"model": "bdh", "max_tokens": 2, "messages": [{"role": "user", "content": '
                                 '[{"type": "text", "text": %s}]}]}', "messages.0.content.0.text"),
        ("/v1/sessions", '{"model": %s}', "model"),
    ]
    n_sessions = len(h.get("/v1/sessions").json()["data"])
    for path, body, param in cases:
        r = h.post(path, content=(body % bad).encode(), headers={"Content-Type": "application/json"})
        e = _error(r, 400, "invalid_value", param, "character 1", "\\ud800", "surrogate")
        assert e["param"] == param
    assert len(h.get("/v1/sessions").json()["data"]) == n_sessions  # nothing was created
    # a whole surrogate pair is text: accepted
    r = h.post("/v1/completions", content=b'{"model": "bdh", "max_tokens": 2, "prompt": "\\ud83d\\ude00"}',
               headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 4, r.text
    h.close()


def test_full_disk_sessions_get_507_and_leave_no_file(model_dirs, tmp_path):
    """A 20 kB file-size limit on the server (RLIMIT_FSIZE: writes past it fail with EFBIG, as on a full disk): a
    BDH session (66 kB) cannot be saved, a GPT session (0.5 kB per token) holds ~35 tokens. Before: 500 "internal
    error: OSError", a "new" session whose turn failed left on disk, a streamed turn cut off. Now: 507 naming the
    problem, no file the client has no id for, the session as it was, and whatever fits still served."""
    from test_audit import _file_size_limit

    sdir = tmp_path / "sessions"
    srv = ServerProc(model_dirs, sdir, preexec_fn=_file_size_limit(20_000)).start()
    try:
        c, h = client(srv), http(srv)
        no_room = ("insufficient_storage", "no room", "File too large")
        _error(h.post("/v1/sessions", json={"model": "bdh"}), 507, *no_room, "no session was created")
        _error(h.post("/v1/completions", json={"model": "bdh", "prompt": "hi", "max_tokens": 2, "session": "new"}),
               507, *no_room, "no session was created")
        _error(h.post("/v1/completions", json={"model": "gpt", "prompt": "x" * 40, "max_tokens": 8,
                                               "session": "new"}), 507, *no_room, "deleted")  # the turn's save
        with pytest.raises(openai.APIStatusError) as got:
            c.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "y" * 40}], max_tokens=8,
                                      extra_body={"session": "new"})
        _error(got.value.response, 507, *no_room, "deleted")
        assert h.get("/v1/sessions").json()["data"] == [] and sorted(sdir.iterdir()) == []  # no orphan
        # a session that fits: a turn too large for the disk leaves it as it was, streamed or not
        r = c.completions.create(model="gpt", prompt="hello", max_tokens=4, temperature=0,
                                 extra_body={"session": "new"})
        sid, n = r.model_extra["session"]["id"], r.model_extra["session"]["n_tokens"]
        file = sdir / f"{sid}.safetensors"
        saved = file.read_bytes()
        with pytest.raises(openai.APIStatusError) as got:
            c.completions.create(model="gpt", prompt="z" * 30, max_tokens=4, temperature=0,
                                 extra_body={"session": sid})
        _error(got.value.response, 507, *no_room, sid, "keeps its state of before this request")
        with h.stream("POST", "/v1/completions", json={"model": "gpt", "prompt": "z" * 30, "max_tokens": 4,
                                                        "stream": True, "session": sid}) as r:
            events = [json.loads(x[6:]) for x in r.iter_lines() if x.startswith("data: {")]
        assert events[-1]["error"]["code"] == "insufficient_storage" and sid in events[-1]["error"]["message"]
        assert h.get(f"/v1/sessions/{sid}").json()["n_tokens"] == n and file.read_bytes() == saved
        r = c.completions.create(model="gpt", prompt="a", max_tokens=2, temperature=0, extra_body={"session": sid})
        assert r.model_extra["session"]["n_tokens"] == n + 3  # it continues
        r = c.completions.create(model="bdh", prompt="no session", max_tokens=3)  # requests without a session
        assert r.usage.completion_tokens == 3 and h.get("/health").json()["status"] == "ok"
        h.close()
    finally:
        srv.stop()
    assert sorted(p.name for p in sdir.iterdir()) == [file.name]  # no temporary file either


def test_unreadable_session_files_are_moved_aside_and_reported(model_dirs, tmp_path):
    """Session files the server cannot read (truncated, not safetensors, another format). Before: skipped in
    silence, then "does not exist". Now: a warning per file at start naming it, the file moved (unchanged) into
    `unreadable/`, and a request for its session told so (410); the readable sessions are served."""
    from safetensors.torch import save_file

    sdir = tmp_path / "sessions"
    store = SessionStore(sdir, {"gpt": load_model(model_dirs["gpt"])}, {"gpt": model_fingerprint(model_dirs["gpt"])})
    good, bad = store.create("gpt")["id"], [store.create("gpt")["id"] for _ in range(3)]
    file = {sid: sdir / f"{sid}.safetensors" for sid in [good, *bad]}
    file[bad[0]].write_bytes(file[bad[0]].read_bytes()[:100])  # truncated
    file[bad[1]].write_bytes(b"not a safetensors file")
    save_file({"x": torch.zeros(2)}, str(file[bad[2]]), metadata={"format": "something else"})
    content = {sid: file[sid].read_bytes() for sid in bad}
    srv = ServerProc(model_dirs, sdir).start()
    try:
        h = http(srv)
        assert [s["id"] for s in h.get("/v1/sessions").json()["data"]] == [good]
        for sid in bad:
            for r in (h.get(f"/v1/sessions/{sid}"),
                      h.post("/v1/completions", json={"model": "gpt", "prompt": "a", "max_tokens": 1, "session": sid})):
                _error(r, 410, "session_unreadable", sid, "unreadable", f"moved to unreadable/{sid}.safetensors")
        r = h.post("/v1/completions", json={"model": "gpt", "prompt": "a", "max_tokens": 1, "session": good})
        assert r.status_code == 200 and r.json()["session"]["n_tokens"] == 2
        assert h.get("/health").json()["sessions"]["unreadable"] == 3
        h.close()
    finally:
        srv.stop()
    out = srv.proc.stdout.read()
    for sid in bad:
        assert not file[sid].exists() and (sdir / "unreadable" / file[sid].name).read_bytes() == content[sid]
        lines = [x for x in out.splitlines() if file[sid].name in x]
        assert len(lines) == 1 and "warning" in lines[0] and "unreadable" in lines[0], out
    assert "3 unreadable" in out
    again = SessionStore(sdir, {}, {})  # moved aside: a restart finds nothing more to warn about
    assert again.unreadable == {} and [s["id"] for s in again.list()] == [good]
