"""Issue 24's acceptance test: a third model type defined only in this file (a tiny GRU LM), registered once, goes
through every surface with no edit outside this file: `bdh.training.train`, `save_pretrained` / `bdh.load_model`,
`generate`, a real `bdh serve` subprocess (which imports this file to register the type) with the `openai` client,
`transformers.AutoModelForCausalLM` (in-process: the type is registered in this process), a `bdh.tasks` run through
the trainer, and the viewer's data functions and app (the page degrades to the Text view; BDH-only views refuse by
capability)."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from bdh.config import JSONConfig
from bdh.interface import register_model_type
from bdh.pretrained import PretrainedMixin

QUIET = dict(progress=False, echo=lambda s: None)


@dataclasses.dataclass
class GRUConfig(JSONConfig):
    MODEL_TYPE = "tinygru"
    n_layer: int = 1
    n_embd: int = 16
    n_head: int = 1
    vocab_size: int = 256

    def check_training(self, *, batching: str) -> None:
        pass


@dataclasses.dataclass
class GRUState:
    h: torch.Tensor  # (B, d)
    pos: torch.Tensor  # (B,)

    @property
    def batch_size(self) -> int:
        return int(self.pos.shape[0])

    def select(self, rows) -> "GRUState":
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.pos.device)
        return GRUState(self.h.index_select(0, idx), self.pos.index_select(0, idx))

    @staticmethod
    def cat(states) -> "GRUState":
        return GRUState(torch.cat([s.h for s in states]), torch.cat([s.pos for s in states]))


class TinyGRU(PretrainedMixin, nn.Module):
    capabilities = frozenset()
    embedding_params = ("embed", "head")
    tiny_task_model = {"n_embd": 32}

    def __init__(self, config: GRUConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.cell = nn.GRUCell(config.n_embd, config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size)

    @property
    def device(self):
        return self.embed.weight.device

    def _run(self, idx, h):
        e, hs = self.embed(idx), []
        for t in range(idx.shape[1]):
            h = self.cell(e[:, t], h)
            hs.append(h)
        return self.head(torch.stack(hs, 1)), h

    def init_state(self, batch_size, device=None):
        device = self.device if device is None else device
        return GRUState(torch.zeros(batch_size, self.config.n_embd, device=device),
                        torch.zeros(batch_size, dtype=torch.long, device=device))

    def forward(self, idx, targets=None, *, form="auto", detach_kv=False):
        idx = self._check_ids(idx, "idx", 2)
        logits, _ = self._run(idx, self.init_state(idx.shape[0]).h)
        return logits, self._loss(logits, idx, targets)

    def prefill(self, idx, state=None, *, form="auto", detach_kv=False):
        idx = self._check_ids(idx, "idx", 2)
        state = self.init_state(idx.shape[0]) if state is None else state
        logits, h = self._run(idx, state.h)
        return logits, GRUState(h, state.pos + idx.shape[1])

    def step(self, token_ids, state, *, inplace=False, check_ids=True):
        ids = self._check_ids(token_ids, "token_ids", 1, values=check_ids)
        logits, h = self._run(ids[:, None], state.h)
        if inplace:
            state.h.copy_(h)
            state.pos.add_(1)
            return logits[:, -1], state
        return logits[:, -1], GRUState(h, state.pos + 1)

    def carry_state(self, state):
        return GRUState(state.h.detach(), state.pos)

    def state_to_tensors(self, state, prefix=""):
        return {f"{prefix}h": state.h, f"{prefix}pos": state.pos}

    def state_from_tensors(self, tensors, prefix="", device=None):
        return GRUState(tensors[f"{prefix}h"].to(device or self.device), tensors[f"{prefix}pos"].to(device or self.device))

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self):
        d, V = self.config.n_embd, self.config.vocab_size
        return 2 * (6 * d * d + d * V)


register_model_type("tinygru", GRUConfig, TinyGRU)  # once, at import (the serve subprocess imports this file too)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from bdh.training import load_run_config, train

    tmp = tmp_path_factory.mktemp("gru")
    (tmp / "corpus.txt").write_text("the cat sat on the mat. the dog ran to the door.\n" * 200)
    (tmp / "gru.toml").write_text('[model]\nmodel_type = "tinygru"\nn_embd = 16\n')
    run = load_run_config(tmp / "gru.toml", [
        f"data.corpus={tmp / 'corpus.txt'}", "data.block_size=16", "train.steps=6", "train.batch_size=4",
        "train.warmup=1", "train.lr=1e-2", "train.eval_every=3", "train.eval_tokens=128",
        "train.final_eval_tokens=128", "train.eval_batch_size=2", "train.sample_tokens=0", "train.device=cpu",
        "train.optimizer=muon"])  # Muon: the type's declared embedding_params stay with AdamW
    result = train(run, tmp / "run", **QUIET)
    return tmp / "run", result


def test_trains_saves_loads_and_generates(trained, tmp_path):
    from bdh import load_model

    out, result = trained
    assert isinstance(result.model, TinyGRU) and (out / "config.json").is_file()
    m = load_model(out)
    assert isinstance(m, TinyGRU) and all(torch.equal(p, q) for p, q in zip(m.parameters(), result.model.parameters()))
    m.save_pretrained(tmp_path / "again", tokenizer=m.tokenizer)
    assert isinstance(load_model(tmp_path / "again"), TinyGRU)
    text = m.generate("the cat ", 8, temperature=0)
    assert isinstance(text, str) and text == m.generate("the cat ", 8, temperature=0)
    with pytest.raises(ValueError, match="sparse_decode"):  # refused by capability
        m.generate("the ", 4, sparse=True)


def test_transformers_auto_model_in_process(trained):
    pytest.importorskip("transformers")
    import bdh.hf  # noqa: F401  (registers every registered type, this one included)
    from transformers import AutoModelForCausalLM

    from bdh import load_model

    out, _ = trained
    hf = AutoModelForCausalLM.from_pretrained(out)
    assert type(hf).__name__ == "TinyGRUForCausalLM" and isinstance(hf.model, TinyGRU)
    ids = torch.tensor([list(b"the cat ")])
    with torch.no_grad():
        want = load_model(out)(ids)[0]
        got = hf(ids, use_cache=False).logits
    assert torch.allclose(got, want)
    greedy = hf.generate(ids, max_new_tokens=5, do_sample=False)
    assert greedy.shape == (1, ids.shape[1] + 5)


def test_task_run_through_the_trainer(tmp_path):
    from bdh.tasks import task_run_config
    from bdh.training import train

    run = task_run_config("parity", model_type="tinygru", steps=3,
                          overrides=["train.eval_every=3", "train.device=cpu", "train.sample_tokens=0"])
    assert run.model == {"model_type": "tinygru", "n_embd": 32}  # the type's declared tiny_task_model
    result = train(run, tmp_path / "task", **QUIET)
    assert isinstance(result.model, TinyGRU) and result.summary["step"] == 3


def test_viewer_degrades_to_what_the_type_supports(trained):
    from bdh import load_model
    from bdh.view import data

    m = load_model(trained[0])
    info = data.model_summary(m)
    assert info["model_type"] == "tinygru" and info["views"] == ["text"] and info["bdh"] is False
    tv = data.text_view(m, "the cat sat")
    assert len(tv["tokens"]) == len("the cat sat")
    with pytest.raises(ValueError, match="capability 'neurons'"):
        data.neuron_view(m, 0, 0, 0)
    with pytest.raises(ValueError, match="capability 'rho_state'"):
        data.state_view(m, "the cat")
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from bdh.view.app import Viewer, create_app

    app = create_app(Viewer(m, str(trained[0])))
    with TestClient(app) as c:
        assert c.get("/api/info").json()["model_type"] == "tinygru"


def test_served_by_a_real_bdh_serve_subprocess(trained):
    openai = pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    from bdh.serve.loadtest import httpx_module
    from conftest import stop_process

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    httpx = httpx_module()
    here = Path(__file__).parent
    code = (f"import sys; sys.path[:0] = [{str(here)!r}]; import test_third_model_type; from bdh.cli import main; "
            f"sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, "serve", "--model", f"gru={trained[0]}", "--api-key", "k",
                             "--threads", "1", "--port", str(port)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert time.time() < deadline
                time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0, timeout=60)
        r = client.completions.create(model="gru", prompt="the cat ", max_tokens=5, temperature=0)
        assert r.usage.completion_tokens == 5 and isinstance(r.choices[0].text, str)
    finally:
        stop_process(proc)
