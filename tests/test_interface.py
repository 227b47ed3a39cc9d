"""A third model type plugs into the generic machinery: a toy recurrent LM defined and registered here is trained
by the real `bdh.training.train` (TBPTT: its state travels through checkpoints), resumed exactly, loaded with
`bdh.load_model`, evaluated by `bdh eval` and generates text."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from bdh.config import JSONConfig
from bdh.interface import LanguageModel, get_model_type, register_model_type, unregister_model_type
from bdh.pretrained import PretrainedMixin

QUIET = dict(progress=False, echo=lambda s: None)


# ----------------------------------------------------------------------------------------------- the toy type
@dataclasses.dataclass
class ToyConfig(JSONConfig):
    """A leaky recurrent LM: h_t = leak * h_{t-1} + tanh(E x_t), logits_t = W tanh(M h_t)."""

    MODEL_TYPE = "toy"
    n_layer: int = 1
    n_embd: int = 16
    vocab_size: int = 256
    leak: float = 0.5

    def check_training(self, *, batching: str) -> None:
        if batching not in ("random", "tbptt"):
            raise ValueError(f"data.batching = {batching!r}: expected random or tbptt")


@dataclasses.dataclass
class ToyState:
    h: torch.Tensor  # (B, d)
    pos: torch.Tensor  # (B,) int64: tokens read

    @property
    def batch_size(self) -> int:
        return int(self.pos.shape[0])

    def select(self, rows) -> "ToyState":
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.pos.device)
        return ToyState(self.h.index_select(0, idx), self.pos.index_select(0, idx))

    @staticmethod
    def cat(states) -> "ToyState":
        return ToyState(torch.cat([s.h for s in states]), torch.cat([s.pos for s in states]))


class ToyLM(PretrainedMixin, nn.Module):
    capabilities = frozenset()  # one form, none of BDH's training options

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.mix = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.head = nn.Linear(config.n_embd, config.vocab_size)

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    def _run(self, idx: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e, hs = torch.tanh(self.embed(idx)), []
        for t in range(idx.shape[1]):
            h = self.config.leak * h + e[:, t]
            hs.append(h)
        return self.head(torch.tanh(self.mix(torch.stack(hs, 1)))), h

    def init_state(self, batch_size: int, device=None) -> ToyState:
        device = self.device if device is None else device
        return ToyState(torch.zeros(batch_size, self.config.n_embd, device=device),
                        torch.zeros(batch_size, dtype=torch.long, device=device))

    def forward(self, idx, targets=None, *, form="auto", detach_kv=False):
        idx = self._check_ids(idx, "idx", 2)
        logits, _ = self._run(idx, self.init_state(idx.shape[0]).h)
        return logits, self._loss(logits, idx, targets)

    def prefill(self, idx, state=None, *, form="auto", detach_kv=False):
        idx = self._check_ids(idx, "idx", 2)
        state = self.init_state(idx.shape[0]) if state is None else state
        logits, h = self._run(idx, state.h)
        return logits, ToyState(h, state.pos + idx.shape[1])

    def step(self, token_ids, state, *, inplace=False, check_ids=True):
        ids = self._check_ids(token_ids, "token_ids", 1, values=check_ids)
        logits, h = self._run(ids[:, None], state.h)
        return logits[:, -1], ToyState(h, state.pos + 1)

    def carry_state(self, state: ToyState) -> ToyState:
        return ToyState(state.h.detach(), state.pos)

    def state_to_tensors(self, state: ToyState, prefix: str = "") -> dict[str, torch.Tensor]:
        return {f"{prefix}h": state.h, f"{prefix}pos": state.pos}

    def state_from_tensors(self, tensors, prefix: str = "", device=None) -> ToyState:
        h, pos = tensors[f"{prefix}h"], tensors[f"{prefix}pos"]
        return ToyState(h.to(device or self.device), pos.to(device or self.device))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> int:
        d, V = self.config.n_embd, self.config.vocab_size
        return 2 * (d * d + d * V)


@pytest.fixture
def toy():
    register_model_type("toy", ToyConfig, ToyLM)
    yield
    unregister_model_type("toy")


def _run_config(tmp_path: Path, *extra: str):
    from bdh.training import load_run_config

    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "to", "red", "door", "and", "then", "slept"]
    g = torch.Generator().manual_seed(0)
    text = "\n".join(" ".join(words[i] for i in torch.randint(0, len(words), (12,), generator=g).tolist()) + "."
                     for _ in range(600))
    (tmp_path / "corpus.txt").write_text(text)
    (tmp_path / "toy.toml").write_text('[model]\nmodel_type = "toy"\nn_embd = 16\nleak = 0.75\n')
    over = [f"data.corpus={tmp_path / 'corpus.txt'}", "data.block_size=16", "data.batching=tbptt", "train.steps=6",
            "train.batch_size=2", "train.grad_accum=2", "train.warmup=1", "train.lr=1e-2", "train.log_every=1",
            "train.eval_every=3", "train.eval_tokens=256", "train.final_eval_tokens=512", "train.eval_batch_size=2",
            "train.sample_tokens=8", "train.checkpoint_every=3", "train.keep_last=5", "train.device=cpu", *extra]
    return load_run_config(tmp_path / "toy.toml", over)


def _train_losses(out: Path) -> dict[int, float]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if r.get("split") == "train"}


# ----------------------------------------------------------------------------------------------- tests
def test_the_toy_type_is_registered_and_implements_the_interface(toy):
    assert get_model_type("toy").model_class is ToyLM
    assert isinstance(ToyLM(ToyConfig()), LanguageModel)


def test_a_third_model_type_trains_resumes_loads_and_generates(toy, tmp_path):
    from bdh import load_model
    from bdh.training import train

    run = _run_config(tmp_path)
    assert run.model_config(256) == ToyConfig(n_embd=16, leak=0.75)
    a = tmp_path / "a"
    full = train(run, a, **QUIET)
    assert isinstance(full.model, ToyLM)
    la = _train_losses(a)
    assert sorted(la) == list(range(1, 7)) and la[6] < la[1]
    # the carried TBPTT states of both micro-steps are in the checkpoint, as the model's own named tensors
    from safetensors.torch import load_file

    rank0 = load_file(str(a / "checkpoints" / "step-00000003" / "rank0.safetensors"))
    assert {"stream.0.h", "stream.0.pos", "stream.1.h", "stream.1.pos"} <= set(rank0)
    assert rank0["stream.0.pos"].tolist() == [48, 48]  # 3 windows of 16 tokens read
    # resume from step 3 in another directory: steps 4-6, the final loss and the weights repeat exactly
    b = tmp_path / "b"
    shutil.copytree(a / "checkpoints" / "step-00000003", b / "checkpoints" / "step-00000003")
    resumed = train(run, b, resume="latest", **QUIET)
    lb = _train_losses(b)
    assert sorted(lb) == [4, 5, 6] and all(lb[s] == la[s] for s in lb)
    assert resumed.summary["val_loss"] == full.summary["val_loss"]
    assert all(torch.equal(p, q) for p, q in zip(full.model.parameters(), resumed.model.parameters()))
    # load it back by its model_type and generate
    m = load_model(a)
    assert isinstance(m, ToyLM) and m.config == full.model.config
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), full.model.parameters()))
    text = m.generate("the cat ", 12, temperature=0)
    assert isinstance(text, str) and len(text) > 0 and text == m.generate("the cat ", 12, temperature=0)
    two = m.generate(["the ", "a dog "], 5, seed=0)  # prompts of different lengths: ToyState.cat, select
    assert len(two) == 2


def test_bdh_eval_cli_on_the_toy_model_with_device_and_threads(toy, tmp_path, capsys):
    from bdh.cli import main
    from bdh.training import train

    out = tmp_path / "run"
    train(_run_config(tmp_path, "train.steps=2", "train.sample_tokens=0"), out, **QUIET)
    assert main(["eval", "--model", str(out), "--device", "cpu", "--threads", "1", "--tokens", "256", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["carry"] is True and res["tokens"] > 0 and res["loss"] > 0
    assert main(["eval", "--model", str(out), "--threads", "0"]) == 1
    assert "--threads 0: expected a positive integer" in capsys.readouterr().err
    assert main(["eval", "--model", str(out), "--device", "nonsense"]) == 1
    assert "--device 'nonsense'" in capsys.readouterr().err


def test_train_options_are_checked_against_the_capabilities(toy, tmp_path):
    for item, words in (("train.no_bptt=true", "'no_bptt' capability"), ("train.form=chunked", "one form"),
                        ("train.activity_penalty=1", "'activity_penalty' capability")):
        with pytest.raises(ValueError, match=words):
            _run_config(tmp_path, item)
    with pytest.raises(ValueError, match="model.mlp_internal_dim_multiplier is not a setting of model_type 'toy'"):
        _run_config(tmp_path, "model.mlp_internal_dim_multiplier=4")
