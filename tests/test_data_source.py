"""The data-source interface (`bdh.training.data_source`): a third kind of data, registered under its own corpus
prefix in this file, trains, evaluates, checkpoints and resumes exactly through the real trainer, which knows it
only through the interface; the shipped kinds are found by prefix."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from bdh.training import load_run_config, train
from bdh.training.corpus import CorpusSource
from bdh.training.data_source import DataSource
from bdh.training.sources import _SOURCES, data_source_kind, register_data_source

QUIET = dict(progress=False, echo=lambda s: None)


class CountStream:
    """Rows of (start + i) mod 50 for a seeded start per row; its state is the step counter."""

    def __init__(self, rows: int, T: int, seed: int):
        self.rows, self.T, self.seed, self.step = rows, T, seed, 0

    def next(self, micro: int):
        g = torch.Generator().manual_seed(self.seed * 1000 + self.step * 10 + micro)
        starts = torch.randint(0, 50, (self.rows, 1), generator=g)
        w = (starts + torch.arange(self.T + 1)) % 50 + 60  # bytes '<'..'m'
        return w[:, :-1], w[:, 1:], True

    def end_step(self):
        self.step += 1

    def state_dict(self):
        return {"kind": "count", "step": self.step}, {}

    def load_state_dict(self, meta, tensors):
        self.step = int(meta["step"])


class CountSource(DataSource):
    samples_text = False

    def setup(self, out, dist, *, resume=None, saved_meta=None):
        from bdh.tokenization import get_tokenizer

        self.tokenizer = get_tokenizer("bytes")
        out.mkdir(parents=True, exist_ok=True)

    def start(self, rank, world):
        t = self.run.train
        self.stream = CountStream(t.batch_size // world, self.run.data.block_size, t.data_seed)

    def tokens_per_step(self):
        t = self.run.train
        return t.batch_size * t.grad_accum * self.run.data.block_size

    def evaluate(self, model, max_tokens, *, autocast, rank=0, world=1):
        x, y, _ = CountStream(4, self.run.data.block_size, 12345).next(0)
        with torch.no_grad(), autocast():
            _, loss = model(x, y)
        return {"loss": float(loss), "tokens": y.numel()}

    def eval_text(self, res, *, final=False):
        return f"loss {res['loss']:.4f} on counting"

    def describe(self):
        return "counting mod 50"

    def summary(self, final):
        return {"source": "count"}


@pytest.fixture
def count_source():
    register_data_source("count:", CountSource)
    yield
    _SOURCES.pop("count:", None)


def test_kinds_are_found_by_prefix(count_source):
    assert data_source_kind("shakespeare") is CorpusSource and data_source_kind("gettext:fr") is CorpusSource
    assert data_source_kind("task:parity").__name__ == "TaskSource"  # registered by `import bdh`
    assert data_source_kind("count:anything") is CountSource
    with pytest.raises(ValueError, match="DataSource subclass"):
        register_data_source("x:", object)


def test_a_registered_source_trains_and_resumes_exactly(tmp_path, count_source):
    over = ["data.corpus=count:x", "train.steps=6", "train.checkpoint_every=3", "train.eval_every=3",
            "train.sample_every=3", "train.processes=1", "train.log_every=1", "train.keep_last=5"]
    notes = []
    a = train(load_run_config("tiny", over), tmp_path / "a", progress=False, echo=notes.append)
    recs = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert a.summary["source"] == "count" and a.summary["val_bpb"] is None
    assert not any("sample" in r for r in recs)  # samples_text = False
    assert [r["step"] for r in recs if r.get("split") == "val"] == [3, 6]
    assert any("counting mod 50" in n for n in notes) and any(n.startswith("final val loss") for n in notes)
    # killed after its checkpoint at step 3: resumed, it ends with the same weights and losses
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-00000006")
    b = train(load_run_config("tiny", over), tmp_path / "b", resume="latest", **QUIET)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    strip = [{k: v for k, v in json.loads(line).items() if k not in ("elapsed_s", "tok_per_s")}
             for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert strip == [{k: v for k, v in r.items() if k not in ("elapsed_s", "tok_per_s")} for r in recs]
    assert b.summary["val_loss"] == a.summary["val_loss"]
