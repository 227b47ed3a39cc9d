"""`bdh view`: the Python API (bdh.view.data) against the model, the real server (the `bdh view` command in a
subprocess on a free loopback port) and the page in a real browser (Debian's headless Chromium driven by
Playwright), whose rendered numbers are checked against the Python API.

Browser tests skip when /usr/bin/chromium is absent, unless BDH_REQUIRE_BROWSER=1 (then they fail).
BDH_VIEW_SCREENSHOT=path also saves the Text view's screenshot there (the README's docs/view.png).
"""

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from bdh.analysis.record import hook_name, run_with_cache
from bdh.checkpoint import load_model
from bdh.cli import main
from bdh.tokenization import ByteTokenizer
from bdh.view import data
from conftest import stop_process

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-quic", "--disable-sync"]
TEXT = "The function returns a list of values.\nThe object has an attribute."
INDEX_TOKENS = 8192


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def bdh_dir(tmp_path_factory, trained_tiny):
    d = tmp_path_factory.mktemp("view") / "bdh"
    trained_tiny.save_pretrained(d, tokenizer=ByteTokenizer())
    return d


@pytest.fixture(scope="module")
def bdh_model(bdh_dir):
    return load_model(bdh_dir)


@pytest.fixture(scope="module")
def gpt_dir(tmp_path_factory):
    from bdh.baselines.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("view") / "gpt"
    GPT(GPTConfig(n_layer=2, n_embd=32, n_head=2, vocab_size=256)).save_pretrained(d, tokenizer=ByteTokenizer())
    return d


class Server:
    """`bdh view` in a subprocess; the URL is read from its first stdout line (`page_url`: as printed, with the
    token; `url`: without). `token`: sent as 'Authorization: Bearer' by `request`."""

    def __init__(self, *args: str, timeout: float = 120.0, env: dict | None = None, token: str | None = None):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.auth = {"authorization": f"Bearer {token}"} if token else {}
        self.proc = subprocess.Popen([sys.executable, "-m", "bdh", "view", *args, "--port", "0", "--threads", "1"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.proc.stdout], daemon=True).start()
        self.stderr: list[str] = []
        threading.Thread(target=lambda: [self.stderr.append(x) for x in self.proc.stderr], daemon=True).start()
        try:
            first = lines.get(timeout=timeout)
        except queue.Empty:
            self.close()
            raise RuntimeError(f"bdh view printed no URL in {timeout} s; stderr: {''.join(self.stderr)[-2000:]}")
        assert first.startswith("bdh view: http://"), first
        self.page_url = first.split()[2]
        self.url = self.page_url.split("?", 1)[0]
        deadline = time.monotonic() + timeout  # the socket is bound before the URL is printed; wait for the app
        while True:
            try:
                self.get("api/info")
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError(f"bdh view does not answer at {self.url}; stderr: {''.join(self.stderr)[-2000:]}")
                time.sleep(0.05)

    def request(self, path: str, body=None, raw: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
        """(status, JSON body) of `path`; `headers` replace the default authorization."""
        payload = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=payload, method="GET" if payload is None else "POST",
                                     headers={"content-type": "application/json", **(self.auth if headers is None else headers)})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def get(self, path: str) -> dict:
        status, body = self.request(path)
        assert status == 200, body
        return body

    def close(self) -> None:
        stop_process(self.proc)


@pytest.fixture(scope="module")
def bdh_server(bdh_dir):
    s = Server("--model", str(bdh_dir), "--data", "pydoc", "--index-tokens", str(INDEX_TOKENS))
    yield s
    s.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("BDH_REQUIRE_BROWSER") == "1":
            pytest.fail(f"BDH_REQUIRE_BROWSER=1 but {CHROMIUM} is absent")
        pytest.skip(f"{CHROMIUM} is absent (Debian's chromium package)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def offline_page(browser, allowed: str | None):
    """A page whose requests outside `allowed` (a URL prefix; None: nothing) are refused and recorded."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.blocked = []

    def route(r):
        if allowed is not None and r.request.url.startswith(allowed):
            r.continue_()
        else:
            page.blocked.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.console_errors = []
    page.on("pageerror", lambda e: page.console_errors.append(str(e)))
    return page


# ----------------------------------------------------------------------------- the Python API
def test_text_view_matches_the_model(bdh_model):
    r = data.text_view(bdh_model, TEXT, top_k=3)
    ids = torch.tensor([list(TEXT.encode())])
    assert r["ids"] == ids[0].tolist() and r["n_tokens"] == len(TEXT.encode())
    logits, cache = run_with_cache(bdh_model, ids, [hook_name(l, k) for l in range(2) for k in ("x_sparse", "xy")])
    ce = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="none")
    assert r["loss"][0] is None
    assert r["loss"][1:] == pytest.approx(ce.tolist(), abs=2e-6)
    assert r["mean_loss"] == pytest.approx(float(ce.mean()), abs=2e-6)
    p = torch.softmax(logits[0, 5], -1)
    assert [c["id"] for c in r["topk"][5]] == p.topk(3).indices.tolist()
    assert [c["p"] for c in r["topk"][5]] == pytest.approx(p.topk(3).values.tolist(), abs=2e-6)
    for l in range(2):
        frac = (cache[hook_name(l, "x_sparse")][0] > 0).float().mean(-1)  # (h, T)
        assert np.allclose(r["activity"]["frac"]["x_sparse"][l], frac.numpy(), atol=1e-4, rtol=0)
        assert r["activity"]["mean"]["x_sparse"][l] == pytest.approx(frac.mean(-1).tolist(), abs=1e-6)
    assert 0 < r["activity"]["mean"]["xy"][0][0] < r["activity"]["mean"]["x_sparse"][0][0] + 1e-9  # xy <= x
    # the most active neurons of token 7: the largest xy over all layers, heads and neurons
    t, N = 7, bdh_model.config.N
    allv = torch.cat([cache[hook_name(l, "xy")][0, :, t].flatten() for l in range(2)])
    v, i = allv.topk(8)
    got = r["neurons"]["top"][t]
    assert [x[3] for x in got] == pytest.approx(v.tolist(), abs=1e-6)
    n = bdh_model.config.n
    assert [(x[0], x[1] * N + x[2]) for x in got] == [(int(g) // n, int(g) % n) for g in i]


def test_neuron_view_and_graph(bdh_model):
    from bdh.analysis.graph import graph_block
    from bdh.analysis.sparsity import rope_bands

    r = data.neuron_view(bdh_model, 1, 2, 7)
    c = bdh_model.config
    assert r["rope"]["freq_turns_per_token"] == float(bdh_model.freqs[7])
    assert r["rope"]["band"] == int(rope_bands(bdh_model.freqs, c.rope_theta)[0][7])
    out = r["graph"]["x"]["out"][0]  # the strongest edge from y-neuron (2, 7): G_x^(2, b)[7, j]
    assert out["weight"] == pytest.approx(float(graph_block(bdh_model, 2, out["head"], "x")[7, out["neuron"]]), abs=1e-6)
    assert out["weight"] == pytest.approx(max(float(graph_block(bdh_model, 2, b, "x")[7].max()) for b in range(c.n_head)), abs=1e-6)
    inn = r["graph"]["y"]["in"][0]  # the strongest edge into x-neuron (2, 7) of G_y
    assert inn["weight"] == pytest.approx(max(float(graph_block(bdh_model, b, 2, "y")[:, 7].max()) for b in range(c.n_head)), abs=1e-6)
    for bad in ((2, 0, 0), (0, c.n_head, 0), (0, 0, c.N), (0, 0, -1)):
        with pytest.raises(ValueError, match="expected an integer in"):
            data.neuron_view(bdh_model, *bad)


def test_synapse_and_state_views(bdh_model):
    from bdh.analysis.concepts import CURRENCY, POLITICS
    from bdh.analysis.synapses import SigmaSpec, sigma_pairs, synapse_activations

    r = data.sigma_view(bdh_model, TEXT, 1, [[3, 5], [70, 130]])
    inp = synapse_activations(bdh_model, TEXT, 1)
    spec = SigmaSpec.from_model(bdh_model)
    want = sigma_pairs(inp, spec, [[3, 5], [70, 130]], t=20)
    assert [r["values"][0][20], r["values"][1][20]] == pytest.approx(want.tolist(), abs=1e-5)
    top = data.sigma_view(bdh_model, TEXT, 1)
    assert len(top["pairs"]) == 4 and top["values"][0][-1] >= top["values"][-1][-1]
    cs = data.concept_search(bdh_model, CURRENCY[:8], POLITICS[:8], 1, top=2)
    best = cs["candidates"][0]["test"]
    assert 0 < best["p_value"] <= 1 and -1 <= best["rank_biserial"] <= 1 and cs["split"]["concept_test"] == 4
    with pytest.raises(ValueError, match="expected 6 to"):
        data.concept_search(bdh_model, CURRENCY[:3], POLITICS[:8], 1)
    st = data.state_view(bdh_model, TEXT, points=5)
    assert st["positions"][-1] == len(TEXT.encode()) - 1
    with torch.no_grad():
        _, state = bdh_model.prefill(torch.tensor([list(TEXT.encode())]))
    final = [[float(x) for x in state.rho[l][0].norm(dim=(1, 2))] for l in range(2)]
    own, alt = st["series"]
    assert own["model"] and own["label"] == "no damping" and alt["label"] == "damping 'alibi'"
    assert np.allclose([[h[-1] for h in layer] for layer in own["norms"]], final, rtol=1e-5)
    assert alt["norms"][0][0][-1] < own["norms"][0][0][-1]  # damping shrinks the state


def test_gpt_text_view_and_attention(gpt_dir):
    gpt = load_model(gpt_dir)
    r = data.text_view(gpt, TEXT)
    assert r["activity"] is None and r["neurons"] is None and "BDH-only" in r["note"]
    ids = torch.tensor([list(TEXT.encode())])
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(gpt(ids)[0][0, :-1], ids[0, 1:], reduction="none")
    assert r["loss"][1:] == pytest.approx(ce.tolist(), abs=2e-6)
    a = data.attention_row(gpt, TEXT, 9)
    assert len(a["weights"]) == 2 and len(a["weights"][0]) == 2 and len(a["weights"][0][0]) == 10
    assert all(sum(w) == pytest.approx(1.0, abs=1e-5) for layer in a["weights"] for w in layer)
    # the model's own `attn_probs` hook point over the whole text, row 9 (causal: later tokens change nothing)
    full = {}
    keep = lambda name, p, pos: full.__setitem__(name, p[0, :, 9, :10])  # noqa: E731
    with torch.no_grad(), gpt.hooks({f"blocks.{l}.attn_probs": keep for l in range(2)}):
        gpt(ids)
    for l in range(2):
        assert np.allclose(a["weights"][l], full[f"blocks.{l}.attn_probs"].numpy(), atol=1e-6)
    assert data.attention_row(gpt, TEXT, 0)["weights"][0] == [[1.0], [1.0]]  # the first token sees only itself
    with pytest.raises(ValueError, match="BDH-only"):
        data.neuron_view(gpt, 0, 0, 0)


# ----------------------------------------------------------------------------- the CLI
def test_cli_bad_model_dirs(tmp_path, capsys):
    assert main(["view", "--model", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err and "nope" in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"\0" * 10)
    assert main(["view", "--model", str(tmp_path / "bad")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "invalid config" in err
    assert main(["view", "--model", str(tmp_path), "--text", "hi"]) == 1
    assert "--export" in capsys.readouterr().err
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    assert main(["view", "--model", str(tmp_path), "--export", str(tmp_path / "p.html"),
                 "--text-file", str(tmp_path / "latin1.txt")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not UTF-8" in err and not (tmp_path / "p.html").exists()


def test_export_cli(bdh_dir, tmp_path, capsys):
    page = tmp_path / "page.html"
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    assert main(["view", "--model", str(bdh_dir), "--export", str(page), "--text-file", str(tmp_path / "text.txt")]) == 0
    assert "self-contained" in capsys.readouterr().out
    html = page.read_text(encoding="utf-8")
    embed = json.loads(html.split("window.BDH_EMBED = ", 1)[1].split(";</script>", 1)[0])
    assert embed["text"]["loss"] == data.text_view(load_model(bdh_dir), TEXT)["loss"]
    assert 'src="static/' not in html and 'href="static/' not in html and "window.BDH_EMBED" in html
    assert "echarts" in html and len(html) > 1_000_000


# ----------------------------------------------------------------------------- the server
def test_server_api_and_bad_input(bdh_server, bdh_model, bdh_dir):
    s = bdh_server
    info = s.get("api/info")
    assert info["bdh"] and info["index"]["n_tokens"] == INDEX_TOKENS // 256 * 256
    assert (bdh_dir / "view-index.safetensors").is_file()
    status, r = s.request("api/text", {"text": TEXT})
    assert status == 200 and r["loss"] == data.text_view(bdh_model, TEXT)["loss"]
    bad = [
        (s.request("api/text", {"text": "x" * (data.MAX_TEXT_CHARS + 1)}), 413, "characters; at most"),
        (s.request("api/text", raw=b"x" * (2 << 20)), 413, "at most"),
        (s.request("api/text", raw=b'{"text": "caf\xe9"}'), 400, "not valid UTF-8"),
        (s.request("api/text", raw=b'{"text": '), 400, "not JSON"),
        (s.request("api/text", {"text": ""}), 400, "empty"),
        (s.request("api/text", {"text": 5}), 422, "expected a string"),
        (s.request("api/neuron?layer=7&head=0&neuron=0"), 400, "layer 7"),
        (s.request("api/neuron?layer=0&head=0&neuron=99999"), 400, "neuron 99999"),
        (s.request("api/neuron?layer=a&head=0&neuron=0"), 422, "expected an integer"),
        (s.request("api/sigma", {"text": TEXT, "layer": 0}), 400, "layer 0"),
        (s.request("api/sigma", {"text": TEXT, "layer": 1, "pairs": [[0, 10**6]]}), 400, "pair"),
        (s.request("api/attention", {"text": TEXT, "t": 10**4}), 400, "token 10000"),
        (s.request("api/concepts", {"concept": ["a"], "contrast": ["b"], "layer": 1}), 400, "expected 6 to"),
    ]
    for (status, body), want_status, want in bad:
        assert status == want_status and want in body["error"], (status, body)
        assert "\n" not in body["error"]
    # still serving, with the same numbers
    status, r2 = s.request("api/text", {"text": TEXT})
    assert status == 200 and r2["loss"] == r["loss"]
    n = s.get("api/neuron?layer=1&head=0&neuron=3")
    assert n["index"]["n_tokens"] == info["index"]["n_tokens"] and set(n["index"]["kinds"]) == {"x_sparse", "xy"}
    k = n["index"]["kinds"]["x_sparse"]
    assert sum(k["hist"]) == k["active"] and k["active"] + k["zeros"] == n["index"]["n_tokens"]
    vals = [c["value"] for c in k["contexts"]]
    assert vals == sorted(vals, reverse=True) and len(vals) > 0
    assert s.proc.poll() is None


def test_index_is_cached_and_keyed_to_the_weights(bdh_dir, tmp_path):
    from bdh.view.index import INDEX_NAME, load_or_build_index

    d = tmp_path / "m"
    shutil.copytree(bdh_dir, d, ignore=shutil.ignore_patterns(INDEX_NAME))
    m = load_model(d)
    a = load_or_build_index(m, d, "pydoc", max_tokens=2048, progress=False)
    mtime = (d / INDEX_NAME).stat().st_mtime_ns
    b = load_or_build_index(m, d, "pydoc", max_tokens=2048, progress=False)
    assert (d / INDEX_NAME).stat().st_mtime_ns == mtime
    assert torch.equal(a.t["xy.top_v"], b.t["xy.top_v"]) and b.meta == a.meta
    # the top value of a neuron is its largest activation over the windows
    _, cache = run_with_cache(m, a.t["tokens"].long().view(-1, 256), [hook_name(1, "xy")])
    assert float(a.t["xy.top_v"][1, 0, 5, 0]) == pytest.approx(float(cache[hook_name(1, "xy")][:, 0, :, 5].max()), abs=1e-6)
    with torch.no_grad():
        m.encoder.mul_(1.5)
    m.save_pretrained(d)
    c = load_or_build_index(m, d, "pydoc", max_tokens=2048, progress=False)
    assert (d / INDEX_NAME).stat().st_mtime_ns != mtime and not torch.equal(c.t["xy.top_v"], a.t["xy.top_v"])


# ----------------------------------------------------------------------------- the browser
def _wait_rendered(page, sel: str):
    page.wait_for_selector(f"{sel}[data-rendered='1']", timeout=30_000)


def test_browser_text_neuron_synapse_state(browser, bdh_server, bdh_model, tmp_path):
    page = offline_page(browser, bdh_server.url)
    page.goto(bdh_server.url)
    page.wait_for_selector("body[data-ready='1']")
    text = "The object returns a value.\nThe list has an attribute."
    page.fill("#text", text)
    page.click("#run")
    _wait_rendered(page, "#heatmap")
    page.wait_for_selector("#tokens[data-ready='1']")
    want = data.text_view(bdh_model, text)
    assert page.locator(".tok").count() == want["n_tokens"]
    assert float(page.get_attribute("#summary", "data-mean-loss")) == pytest.approx(want["mean_loss"], abs=1e-6)
    assert f"{want['mean_loss']:.4f}" in page.inner_text("#summary")
    for kind in ("x_sparse", "y_sparse", "xy"):
        for l, h in ((0, 0), (1, 3)):
            cell = page.inner_text(f"td.act[data-kind='{kind}'][data-layer='{l}'][data-head='{h}']")
            assert float(cell) == pytest.approx(want["activity"]["mean"][kind][l][h], abs=5e-5)
    page.screenshot(path=str(tmp_path / "text.png"), full_page=True)
    shot = os.environ.get("BDH_VIEW_SCREENSHOT")
    # click a token: its loss, top next tokens and most active neurons
    t = 12
    page.click(f".tok[data-t='{t}']")
    page.wait_for_selector("#token-neurons")
    assert float(page.get_attribute("#token-loss", "data-value")) == pytest.approx(want["loss"][t], abs=1e-6)
    rows = page.locator("#token-neurons tr.neuron-row")
    assert rows.count() == len(want["neurons"]["top"][t]) > 0
    got = [[int(rows.nth(i).get_attribute(f"data-{k}")) for k in ("layer", "head", "neuron")] for i in range(rows.count())]
    assert got == [x[:3] for x in want["neurons"]["top"][t]]
    assert float(rows.nth(0).inner_text().split()[-1]) == pytest.approx(want["neurons"]["top"][t][0][3], abs=5e-5)
    if shot:
        page.screenshot(path=shot, full_page=False)
    # attention of the token
    page.click("#show-attention")
    _wait_rendered(page, "#attention")
    # click the most active neuron: the Neuron view
    l, h, n = got[0]
    rows.nth(0).click()
    page.wait_for_selector("#neuron-panel[data-ready='1']")
    nv = data.neuron_view(bdh_model, l, h, n)
    assert page.inner_text("#neuron-title").startswith(f"layer {l} · head {h} · neuron {n}")
    assert float(page.get_attribute("#neuron-rope", "data-freq")) == pytest.approx(nv["rope"]["freq_turns_per_token"], rel=1e-12)
    assert int(page.get_attribute("#neuron-rope", "data-band")) == nv["rope"]["band"]
    api = bdh_server.get(f"api/neuron?layer={l}&head={h}&neuron={n}")
    ctx = page.locator(".contexts[data-kind='xy'] .ctx")
    assert ctx.count() == len(api["index"]["kinds"]["xy"]["contexts"])
    if ctx.count():
        assert float(ctx.nth(0).get_attribute("data-value")) == api["index"]["kinds"]["xy"]["contexts"][0]["value"]
    _wait_rendered(page, "#hist")
    page.screenshot(path=str(tmp_path / "neuron.png"), full_page=True)
    # Synapse: sigma along the text
    page.click("#tabs button[data-tab='synapse']")
    page.fill("#s-pairs", "3,5; 70,130")
    page.click("#s-run")
    _wait_rendered(page, "#sigma")
    assert json.loads(page.get_attribute("#sigma", "data-pairs")) == [[3, 5], [70, 130]]
    # the concept search on pasted sentences: p-value and effect size as the Python API computes them
    from bdh.analysis.concepts import CURRENCY, POLITICS

    page.fill("#c-concept", "\n".join(CURRENCY[:8]))
    page.fill("#c-contrast", "\n".join(POLITICS[:8]))
    page.click("#c-run")
    page.wait_for_selector("#concept-table")
    cs = data.concept_search(bdh_model, CURRENCY[:8], POLITICS[:8], 1)
    first = page.locator("#concept-table tr[data-p]").first
    assert float(first.get_attribute("data-p")) == pytest.approx(cs["candidates"][0]["test"]["p_value"], rel=1e-9)
    assert float(first.get_attribute("data-r")) == pytest.approx(cs["candidates"][0]["test"]["rank_biserial"], rel=1e-9)
    assert page.locator("#concept-table tr[data-p]").count() == len(cs["candidates"])
    # State: rho norms
    page.click("#tabs button[data-tab='state']")
    page.click("#st-run")
    _wait_rendered(page, "#state-1")
    page.screenshot(path=str(tmp_path / "state.png"), full_page=True)
    # bad input in the page: an error line, and the page keeps working
    page.click("#tabs button[data-tab='neuron']")
    page.fill("#n-layer", "9")
    page.click("#n-show")
    page.wait_for_selector("#error:not([hidden])")
    assert "layer 9" in page.inner_text("#error")
    assert page.blocked == [] and page.console_errors == []
    page.close()


@pytest.fixture(scope="module")
def exported(bdh_dir, tmp_path_factory) -> Path:
    """`bdh view --export` of TEXT."""
    out = tmp_path_factory.mktemp("export") / "page.html"
    assert main(["view", "--model", str(bdh_dir), "--export", str(out), "--text", TEXT]) == 0
    return out


def open_exported(browser, out: Path):
    page = offline_page(browser, out.as_uri())  # only the file itself may load
    page.goto(out.as_uri())
    page.wait_for_selector("body[data-ready='1']")
    return page


def test_browser_exported_page_offline(browser, exported, bdh_model, tmp_path):
    page = open_exported(browser, exported)
    _wait_rendered(page, "#heatmap")
    want = data.text_view(bdh_model, TEXT)
    assert page.locator(".tok").count() == want["n_tokens"]
    cell = page.inner_text("td.act[data-kind='xy'][data-layer='1'][data-head='1']")
    assert float(cell) == pytest.approx(want["activity"]["mean"]["xy"][1][1], abs=5e-5)
    page.click(".tok[data-t='4']")
    assert float(page.get_attribute("#token-loss", "data-value")) == pytest.approx(want["loss"][4], abs=1e-6)
    page.click("#tabs button[data-tab='state']")
    _wait_rendered(page, "#state-0")
    assert page.blocked == [] and page.console_errors == []
    page.screenshot(path=str(tmp_path / "export.png"), full_page=True)
    page.close()


def test_browser_export_has_no_blank_tab(browser, exported):
    """The exported page shows only the views it holds (Text, State), each with content and no disabled button,
    and says that Neuron and Synapse need the live server; a token's neuron rows lead nowhere hidden."""
    page = open_exported(browser, exported)
    assert "bdh view --model" in page.inner_text("#model-info")
    tabs = page.locator("#tabs button")
    shown = [tabs.nth(i).get_attribute("data-tab") for i in range(tabs.count()) if tabs.nth(i).is_visible()]
    assert shown == ["text", "state"]
    for name in shown:
        page.click(f"#tabs button[data-tab='{name}']")
        assert page.is_visible(f"#tab-{name}")
        assert page.locator(f"#tab-{name} button:visible").evaluate_all("bs => bs.filter((b) => b.disabled).length") == 0
        assert page.locator(f"#tab-{name} .chart:visible").count() > 0
    page.click("#tabs button[data-tab='text']")
    page.click(".tok[data-t='4']")
    page.locator("#token-neurons tr.neuron-row").first.click()
    assert page.is_visible("#tab-text") and not page.is_visible("#tab-neuron")
    assert page.blocked == [] and page.console_errors == []
    page.close()


def test_browser_loss_legend(browser, exported, bdh_model):
    """The Text view's legend: the loss each colour stands for, the same colours as the tokens'."""
    page = open_exported(browser, exported)
    page.wait_for_selector("#tokens[data-ready='1']")
    want = data.text_view(bdh_model, TEXT)["loss"]
    hi = max(x for x in want if x is not None)
    legend = page.locator("#loss-legend")
    assert legend.is_visible() and float(legend.get_attribute("data-max")) == pytest.approx(hi, abs=1e-6)
    assert f"{hi:.2f}" in legend.inner_text() and "nats" in legend.inner_text()
    bg = lambda sel: page.locator(sel).evaluate("e => getComputedStyle(e).backgroundColor")  # noqa: E731
    steps = page.locator("#loss-legend .swatch[data-loss]:not([data-loss=''])")
    values = [float(steps.nth(i).get_attribute("data-loss")) for i in range(steps.count())]
    assert values[0] == 0 and values[-1] == pytest.approx(hi, abs=1e-6) and values == sorted(values)
    assert bg(f".tok[data-t='{want.index(hi)}']") == bg("#loss-legend .swatch[data-loss]:not([data-loss='']) >> nth=-1")
    assert bg(".tok[data-t='0']") == bg("#loss-legend .swatch[data-loss='']")  # the first token: no loss
    page.close()


# The page-pixel boxes of a chart's x-axis labels and of its zoom slider, from ECharts' own layout (public
# getInstanceByDom, getModel, getViewOfComponentModel). A label's box is its line box, 1.2 x its font size about
# the centre ECharts placed it at (ECharts sizes a line by a CJK glyph, absent from a bare system: too small).
_BOXES = """(div) => {
  const c = echarts.getInstanceByDom(div), m = c.getModel(), r0 = div.getBoundingClientRect();
  const boxes = (type, keep, box) => {
    const out = [];
    c.getViewOfComponentModel(m.getComponent(type, 0)).group.traverse((e) => {
      if (e.isGroup || e.ignore || e.invisible || !keep(e)) return;
      const r = e.getBoundingRect().clone();
      r.applyTransform(e.getComputedTransform());
      if (r.width > 0 && r.height > 0) out.push(box(e, [r.x + r0.x, r.y + r0.y, r.width, r.height]));
    });
    return out;
  };
  const line = (e, [x, y, w, h]) => { const fs = e.style.fontSize || 12; return [x, y + h / 2 - 0.6 * fs, w, 1.2 * fs]; };
  return { labels: boxes("xAxis", (e) => e.type === "text" && e.style.text, line),
           slider: boxes("dataZoom", () => true, (e, b) => b) };
}"""


def _intersect(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def test_browser_axis_labels_clear_the_zoom_slider(browser, bdh_server):
    """The x-axis labels (tokens) of the sigma chart and of the Text view's heatmap (over 120 tokens: zoomable)
    do not overlap their zoom sliders."""
    page = offline_page(browser, bdh_server.url)
    page.goto(bdh_server.url)
    page.wait_for_selector("body[data-ready='1']")
    page.fill("#text", "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
                       "The slings and arrows of outrageous fortune,")
    page.click("#run")
    _wait_rendered(page, "#heatmap")
    page.click("#tabs button[data-tab='synapse']")
    page.click("#s-run")
    _wait_rendered(page, "#sigma")
    for chart in ("#sigma", "#heatmap"):
        page.click(f"#tabs button[data-tab='{'synapse' if chart == '#sigma' else 'text'}']")
        b = page.locator(chart).evaluate(_BOXES)
        assert b["labels"] and b["slider"], chart
        bad = [(l, s) for l in b["labels"] for s in b["slider"] if _intersect(l, s)]
        assert not bad, (chart, bad[:3])
    assert page.console_errors == [] and page.blocked == []
    page.close()


TOKEN = "s3cret-Token_1"


def test_token_guards_page_and_api(browser, bdh_dir):
    """With a token ($BDH_VIEW_TOKEN here) every path answers 401 without it; the printed URL (?token=) opens a
    working page, whose own requests then carry it (a cookie)."""
    s = Server("--model", str(bdh_dir), "--no-index", env={"BDH_VIEW_TOKEN": TOKEN}, token=TOKEN)
    try:
        assert s.page_url == s.url + "?token=" + TOKEN
        for path in ("", "api/info", "static/view.js", "api/info?token=wrong"):
            for headers in ({}, {"authorization": "Bearer wrong"}, {"cookie": f"bdh_view_{s.url.rsplit(':', 1)[1].strip('/')}=wrong"}):
                req = urllib.request.Request(s.url + path, headers=headers)
                with pytest.raises(urllib.error.HTTPError) as e:
                    urllib.request.urlopen(req, timeout=60)
                assert e.value.code == 401, (path, headers)
                assert "token" in json.loads(e.value.read())["error"]
        status, body = s.request("api/text", {"text": TEXT}, headers={})
        assert status == 401 and "token" in body["error"]
        status, body = s.request("api/text", {"text": TEXT})  # the bearer header
        assert status == 200 and body["n_tokens"] == len(TEXT.encode())
        page = offline_page(browser, s.url)
        assert page.goto(s.url).status == 401
        page.goto(s.page_url)
        page.wait_for_selector("body[data-ready='1']")
        page.click("#run")
        page.wait_for_selector("#tokens[data-ready='1']")
        assert page.locator(".tok").count() == len(page.input_value("#text").encode())
        assert page.is_hidden("#error") and page.blocked == [] and page.console_errors == []
        page.close()
    finally:
        s.close()


def test_non_loopback_host_warns_without_token(bdh_dir):
    from bdh.view.cli import VIEW_TOKEN

    s = Server("--model", str(bdh_dir), "--no-index", "--host", "0.0.0.0")
    try:
        assert s.url.startswith("http://0.0.0.0:") and s.get("api/info")["bdh"]
        warning = "".join(s.stderr)
        assert "warning: listening on 0.0.0.0 without an access token" in warning and "--token" in warning
    finally:
        s.close()
    assert VIEW_TOKEN.warning("bdh view", "0.0.0.0", None, "x")
    for host in ("::", "192.168.1.5", "example.org"):
        assert host in VIEW_TOKEN.warning("bdh view", host, None, "x")
    for host, token in (("127.0.0.1", None), ("localhost", None), ("::1", None), ("127.0.0.2", None),
                        ("0.0.0.0", TOKEN)):
        assert VIEW_TOKEN.warning("bdh view", host, token, "x") is None, host


def test_browser_gpt(browser, gpt_dir):
    s = Server("--model", str(gpt_dir))
    try:
        page = offline_page(browser, s.url)
        page.goto(s.url)
        page.wait_for_selector("body[data-ready='1']")
        assert "BDH-only" in page.inner_text("#note")
        assert not page.is_visible("#heatmap") and not page.is_visible("#tabs button[data-tab='neuron']")
        page.click("#run")
        page.wait_for_selector("#tokens[data-ready='1']")
        page.click(".tok[data-t='5']")
        text = page.input_value("#text")
        want = data.text_view(load_model(gpt_dir), text)
        assert float(page.get_attribute("#token-loss", "data-value")) == pytest.approx(want["loss"][5], abs=1e-6)
        page.click("#show-attention")
        _wait_rendered(page, "#attention")
        assert page.blocked == [] and page.console_errors == []
        page.close()
        status, body = s.request("api/state", {"text": "hello"})
        assert status == 400 and "BDH-only" in body["error"]
    finally:
        s.close()
