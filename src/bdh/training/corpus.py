"""The LM corpus source: a text corpus (`data.corpus`, `bdh.data.corpora.resolve_corpus`) tokenized into a cache in
OUT/data, read as random crops or TBPTT streams (`bdh.training.batching`), validated in nats/token and bits/byte
(`bdh.training.evaluation`). The `DataSource` of every run whose corpus has no registered prefix."""

from __future__ import annotations

from pathlib import Path

from .batching import make_sampler
from .data_source import DataSource
from .evaluation import evaluate, token_byte_lengths


def prepare_data(run, out: Path, dist, tokenizer=None, expect_sha256: dict | None = None):
    """(tokenizer, train tokens, val tokens, {split: source SHA-256}) for the run; tokens are memmaps of a cache
    in OUT/data. `expect_sha256` (on resume: the hashes the run started with) are checked before anything is
    written: a corpus that changed since is a ValueError."""
    from ..data.cache import build_token_cache, cached_source_hash, source_hash
    from ..data.corpora import resolve_corpus
    from ..tokenization import BPETokenizer, get_tokenizer, load_tokenizer

    d = run.data
    splits = resolve_corpus(
        d.corpus, jsonl_field=d.jsonl_field, encoding_errors=d.encoding_errors, val_fraction=d.val_fraction,
        seed=run.train.data_seed,
    )
    if not splits.train.strip():
        raise ValueError(f"data.corpus = {d.corpus!r}: the training split is empty")
    hashes = {"train": source_hash(splits.train), "val": source_hash(splits.val)}
    cache = out / "data"
    for split, want in (expect_sha256 or {}).items():
        where = "the checkpoint"
        if want is None and tokenizer is not None:  # a checkpoint from before data_sha256: the token cache's manifest
            want, where = cached_source_hash(cache, split, tokenizer.name), f"the token cache in {cache}"
        if want is not None and hashes.get(split) != want:
            raise ValueError(
                f"data.corpus = {d.corpus!r} changed since the run started: its {split} split has SHA-256 "
                f"{hashes.get(split, '')[:12]}..., {where} records {want[:12]}...; resume with the original corpus "
                "(and data.val_fraction, train.data_seed), or start a new run in another --out"
            )
    if tokenizer is None:
        if d.tokenizer == "bpe":
            if dist.main:
                BPETokenizer.train([splits.train], d.bpe_vocab_size).save(out / "tokenizer")
            dist.barrier()
            tokenizer = load_tokenizer(out / "tokenizer")
        else:
            tokenizer = get_tokenizer(d.tokenizer)
    data = {}
    for rank_turn in (True, False):  # process 0 builds the cache, the others reuse it
        if dist.main == rank_turn:
            for split, text in (("train", splits.train), ("val", splits.val)):
                data[split] = build_token_cache(text, tokenizer, cache, split, source_id=d.corpus)
        dist.barrier()
    T = d.block_size
    if len(data["train"]) < T + 1:
        raise ValueError(
            f"data.corpus = {d.corpus!r}: the training split has {len(data['train'])} tokens, fewer than "
            f"data.block_size + 1 = {T + 1}; use a longer corpus or a smaller data.block_size"
        )
    if len(data["val"]) < 2:
        raise ValueError(f"data.corpus = {d.corpus!r}: the validation split has {len(data['val'])} token(s); need >= 2")
    return tokenizer, data["train"], data["val"], hashes


class CorpusSource(DataSource):
    """A text corpus as tokens (`DataSource`); `train_tokens`, `val_tokens` are memmaps of the token cache."""

    def __init__(self, run) -> None:
        super().__init__(run)
        self.carries_state = run.data.batching == "tbptt"

    def setup(self, out: Path, dist, *, resume: Path | None = None, saved_meta: dict | None = None) -> None:
        """The tokenizer: the checkpoint's on resume, the saved model's for a trained one (BPE) with init_from."""
        from ..tokenization import load_tokenizer

        run = self.run
        out.mkdir(parents=True, exist_ok=True)
        tokenizer = None
        if resume is not None:
            tokenizer = load_tokenizer(resume)
        elif run.train.init_from and run.data.tokenizer == "bpe":  # fine-tuning keeps the trained BPE
            tokenizer = load_tokenizer(run.train.init_from)
        expect = None
        if resume is not None:  # checked against the corpus the run started with (None: ask the token cache)
            recorded = (saved_meta or {}).get("data_sha256")
            expect = recorded if isinstance(recorded, dict) else {"train": None, "val": None}
        self.tokenizer, self.train_tokens, self.val_tokens, self.sha256 = prepare_data(run, out, dist, tokenizer,
                                                                                       expect)
        self.byte_lengths = token_byte_lengths(self.tokenizer)

    def start(self, rank: int, world: int) -> None:
        self.stream = make_sampler(self.train_tokens, self.run.data, self.run.train, rank, world)

    def tokens_per_step(self) -> int:
        t = self.run.train
        return t.batch_size * t.grad_accum * self.run.data.block_size

    def evaluate(self, model, max_tokens: int, *, autocast, rank: int = 0, world: int = 1) -> dict:
        """{"loss": nats/token, "bpb": bits/byte, "tokens", "bytes"} (`bdh.training.evaluation.evaluate`)."""
        t = self.run.train
        return evaluate(model, self.val_tokens, self.byte_lengths, self.run.data.block_size,
                        batch_size=t.eval_batch_size, max_tokens=max_tokens, carry=self.carries_state, form=t.form,
                        rank=rank, world=world, autocast=autocast)

    def eval_text(self, res: dict, *, final: bool = False) -> str:
        text = f"loss {res['loss']:.4f} nats/token, {res['bpb']:.4f} bits/byte"
        return text + (f" ({res['tokens']:,} tokens, {res['bytes']:,} bytes)" if final else "")

    def describe(self) -> str:
        return (f"{self.run.data.corpus}: {len(self.train_tokens):,} train / {len(self.val_tokens):,} val tokens "
                f"({self.tokenizer.name}) | {self.run.train.steps} steps x {self.tokens_per_step():,} tokens")
