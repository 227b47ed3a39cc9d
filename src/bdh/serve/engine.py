"""The model side of `bdh serve`: one decode thread owns a model and steps every active request together.

Continuous batching: requests wait in a bounded queue; between two decode steps the thread admits new ones
(each prompt prefilled on its own with `bdh.generation.prefill_in_pieces`, continuing from a session's state
when the request names one) and stacks their states onto the batch (`type(state).cat`), so rows sit at different
positions (BDH keeps a position per row; the GPT baseline's KV cache is left-padded and masked). Every step
samples one token per row (its own `SamplingParams`, seed and stop strings), then calls `model.step` once for the
whole batch; finished rows leave the batch (`state.select`) before the next step.

    engine = Engine(model, tokenizer, max_batch=32).start()
    job = Job(prompt_ids, params=SamplingParams(0.0), max_tokens=64, emit=callback)
    engine.submit(job)       # callback(Token(...)) per generated token, then Done(...) or Failed(...)

Every generated token is stepped through the model before its row retires when the request keeps its state
(a session): `Done.state` is then the state after prompt + completion and `Done.logits` (V,) the next-token
logits, so a session continues exactly where the text ended. Only the protocol of `bdh.interface` is used.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from typing import Any, Callable

import torch

from ..generation import RowText, SamplingParams, prefill_in_pieces, sample

log = logging.getLogger("bdh.serve")


class EngineError(Exception):
    """A request the engine refuses; `status` is the HTTP status the server answers with."""

    def __init__(self, message: str, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


# ----------------------------------------------------------------------------------------------- events
@dataclasses.dataclass
class Token:
    """One generated token: its id, the text it completed (stop-string tails are held back), and with
    `Job.logprobs` its log-probability and the top alternatives [(id, logprob), ...]."""

    token_id: int
    text: str
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None


@dataclasses.dataclass
class Done:
    """The request finished: `finish_reason` "stop" (a stop string) or "length" (max_tokens); `text` is the
    held-back rest of the text. With `Job.keep_state`: the state after every token (one row) and the logits (V,)."""

    finish_reason: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    state: Any = None
    logits: torch.Tensor | None = None


@dataclasses.dataclass
class Failed:
    message: str
    status: int = 500
    code: str | None = None


@dataclasses.dataclass
class Job:
    """One request. `state`/`logits` (V,): a session's state and last logits to continue from (left unchanged);
    an empty prompt samples the first token from `logits`. `logprobs`: None, or how many top alternatives to
    report with every token's log-probability. `emit` is called from the decode thread (must be thread-safe)."""

    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int
    emit: Callable[[Any], None]
    stop: list[str] = dataclasses.field(default_factory=list)
    seed: int | None = None
    logprobs: int | None = None
    state: Any = None
    logits: torch.Tensor | None = None
    keep_state: bool = False
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)
    submitted: float = dataclasses.field(default_factory=time.monotonic)


class _Row:
    """A request in the batch: its text (stop strings), RNG and counts."""

    def __init__(self, job: Job, tokenizer, device, prompt_tokens: int):
        self.job, self.prompt_tokens = job, prompt_tokens
        self.text = RowText(tokenizer, job.stop)
        self.gen = None if job.seed is None else torch.Generator(device=device).manual_seed(job.seed)
        self.n = 0  # tokens generated
        self.finish: str | None = None
        self.tail = ""


# ----------------------------------------------------------------------------------------------- engine
class Engine:
    """The decode thread of one model: a bounded queue of jobs, continuous batching of up to `max_batch` rows."""

    def __init__(self, model, tokenizer, *, max_batch: int = 32, max_queue: int = 256, name: str = "model"):
        if max_batch < 1 or max_queue < 1:
            raise ValueError(f"max_batch={max_batch}, max_queue={max_queue}: expected positive integers")
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.max_batch = max_batch
        self.max_positions = model.max_positions  # bdh.interface: learned positions end (GPT), else None
        self._inbox: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"bdh-serve-{name}", daemon=True)
        self._threads = torch.get_num_threads()  # the caller's setting (--threads), applied in the decode thread
        self.stats = {"steps": 0, "tokens": 0, "rows_stepped": 0, "prefill_tokens": 0, "requests": 0, "active": 0,
                      "max_batch_seen": 0}

    # ------------------------------------------------------------------ control
    def start(self) -> "Engine":
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._thread.join(timeout)

    @property
    def queued(self) -> int:
        return self._inbox.qsize()

    def submit(self, job: Job) -> None:
        """Queue a job (EngineError 503 when the queue is full or the engine has stopped)."""
        if self._stopping.is_set() or not self._thread.is_alive():
            raise EngineError("the model's decode thread is not running", 503, "engine_stopped")
        try:
            self._inbox.put_nowait(job)
        except queue.Full:
            raise EngineError(f"the server is busy: {self._inbox.maxsize} requests are already waiting; retry later",
                              503, "queue_full") from None

    # ------------------------------------------------------------------ the decode loop
    def _loop(self) -> None:
        torch.set_num_threads(self._threads)
        with torch.inference_mode():
            rows: list[_Row] = []
            state, logits = None, None  # the batch: state of len(rows) rows, last logits (b, V)
            while not self._stopping.is_set():
                try:
                    rows, state, logits = self._admit(rows, state, logits)
                    if rows:
                        rows, state, logits = self._step(rows, state, logits)
                except Exception as e:  # noqa: BLE001 -- a model failure fails the batch; the server keeps serving
                    log.exception("decode step failed")
                    for r in rows:
                        r.job.emit(Failed(f"the model failed: {type(e).__name__}: {e}", 500, "model_error"))
                    rows, state, logits = [], None, None
                self.stats["active"] = len(rows)
            for r in rows:
                r.job.emit(Failed("the server is shutting down", 503, "shutting_down"))
            while True:  # and every job still waiting
                try:
                    self._inbox.get_nowait().emit(Failed("the server is shutting down", 503, "shutting_down"))
                except queue.Empty:
                    break

    def _admit(self, rows, state, logits):
        """Prefill queued jobs (blocking briefly when the batch is empty) and stack them onto the batch."""
        new_rows, new_states, new_logits = [], [], []
        block = not rows
        while len(rows) + len(new_rows) < self.max_batch:
            try:
                job = self._inbox.get(block=block, timeout=0.05 if block else None)
            except queue.Empty:
                break
            block = False
            if job.cancelled.is_set():
                continue
            self.stats["requests"] += 1
            try:
                lg, st, n_prompt = self._prefill(job)
            except EngineError as e:
                job.emit(Failed(str(e), e.status, e.code))
                continue
            except ValueError as e:  # e.g. a position beyond the model's range
                job.emit(Failed(str(e), 400, "invalid_prompt"))
                continue
            except Exception as e:  # noqa: BLE001 -- e.g. out of memory: this request fails, the batch goes on
                log.exception("prefill failed")
                job.emit(Failed(f"the model failed on the prompt: {type(e).__name__}: {e}", 500, "model_error"))
                continue
            row = _Row(job, self.tokenizer, self.model.device, n_prompt)
            if job.max_tokens == 0:  # prefill only (e.g. feed a prompt into a session)
                job.emit(Done("length", "", n_prompt, 0, st if job.keep_state else None, lg[0].clone()))
                continue
            new_rows.append(row)
            new_states.append(st)
            new_logits.append(lg)
        if not new_rows:
            return rows, state, logits
        parts = ([state] if state is not None else []) + new_states
        try:
            state = type(parts[0]).cat(parts)  # copies: the batch owns its state (sessions' states stay untouched)
            logits = torch.cat(([logits] if logits is not None else []) + new_logits, 0)
        except Exception as e:
            for r in new_rows:  # the running rows are failed by the caller
                r.job.emit(Failed(f"the model failed: {type(e).__name__}: {e}", 500, "model_error"))
            raise
        rows = rows + new_rows
        self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(rows))
        return rows, state, logits

    def _prefill(self, job: Job):
        """Logits (1, V), state (one row) and prompt length of a job, continuing from its session's state."""
        n = len(job.prompt_ids)
        if self.max_positions is not None:
            start = 0 if job.state is None else int(job.state.pos.max())
            if start + n + job.max_tokens > self.max_positions:
                raise EngineError(f"this request needs positions up to {start + n + job.max_tokens} (session "
                                  f"{start} + prompt {n} + max_tokens {job.max_tokens}) but the model has "
                                  f"{self.max_positions} (learned position embeddings)", 400, "context_length_exceeded")
        if n == 0:
            if job.logits is None or job.state is None:
                raise EngineError("the prompt is empty and the session has no tokens yet: expected a prompt", 400,
                                  "empty_prompt")
            return job.logits.view(1, -1).to(self.model.device), job.state, 0
        idx = torch.tensor([job.prompt_ids], dtype=torch.long, device=self.model.device)
        state = None if job.state is None else job.state
        lg, st = prefill_in_pieces(self.model, idx, state=state)
        self.stats["prefill_tokens"] += n
        return lg, st, n

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> list[int]:
        """One token per row: greedy rows by one argmax, the others with their own params and generator."""
        greedy = [i for i, r in enumerate(rows) if r.job.params.temperature == 0]
        out = [0] * len(rows)
        if greedy:
            ids = logits if len(greedy) == len(rows) else logits[greedy]
            for i, t in zip(greedy, ids.argmax(-1).tolist()):
                out[i] = t
        for i, r in enumerate(rows):
            if r.job.params.temperature != 0:
                out[i] = int(sample(logits[i : i + 1], r.job.params, r.gen)[0])
        return out

    def _step(self, rows: list[_Row], state, logits):
        # drop rows whose client went away
        gone = [i for i, r in enumerate(rows) if r.job.cancelled.is_set()]
        if gone:
            rows, state, logits = self._keep(rows, state, logits, [i for i in range(len(rows)) if i not in gone])
            if not rows:
                return rows, None, None
        finite = torch.isfinite(logits).all(-1).tolist()
        if not all(finite):
            for i, ok in enumerate(finite):
                if not ok:
                    rows[i].job.emit(Failed("the model produced non-finite logits (nan or inf): the weights have "
                                            "diverged or are corrupt", 500, "model_error"))
            rows, state, logits = self._keep(rows, state, logits, [i for i, ok in enumerate(finite) if ok])
            if not rows:
                return rows, None, None
        tokens = self._sample(rows, logits)
        lp = None
        if any(r.job.logprobs is not None for r in rows):
            lp = torch.log_softmax(logits.float(), -1)  # (b, V): of the model's distribution (before temperature)
        for i, (r, t) in enumerate(zip(rows, tokens)):
            r.n += 1
            final = r.n >= r.job.max_tokens
            text = r.text.add(t, final=final)
            ev = Token(t, text)
            if r.job.logprobs is not None:
                ev.logprob = float(lp[i, t])
                if r.job.logprobs > 0:
                    top = torch.topk(lp[i], min(r.job.logprobs, lp.shape[-1]))
                    ev.top = list(zip(top.indices.tolist(), top.values.tolist()))
            if r.text.stopped:
                r.finish = "stop"
            elif final:
                r.finish = "length"
            if r.finish is not None:
                r.tail = r.text.flush()
            r.job.emit(ev)
        self.stats["tokens"] += len(rows)
        # rows that finished and keep no state leave now; the others (sessions included) take the step
        for r in rows:
            if r.finish is not None and not r.job.keep_state:
                r.job.emit(Done(r.finish, r.tail, r.prompt_tokens, r.n))
        go = [i for i, r in enumerate(rows) if r.finish is None or r.job.keep_state]
        if not go:
            return [], None, None
        if len(go) < len(rows):
            rows, state, _ = self._keep(rows, state, None, go)
            tokens = [tokens[i] for i in go]
        ids = torch.tensor(tokens, dtype=torch.long, device=self.model.device)
        logits, state = self.model.step(ids, state, inplace=True, check_ids=False)  # sampled ids are in range
        self.stats["steps"] += 1
        self.stats["rows_stepped"] += len(rows)
        done = [i for i, r in enumerate(rows) if r.finish is not None]
        for i in done:
            r = rows[i]
            r.job.emit(Done(r.finish, r.tail, r.prompt_tokens, r.n, state.select([i]), logits[i].clone()))
        if done:
            rows, state, logits = self._keep(rows, state, logits, [i for i in range(len(rows)) if i not in done])
        return rows, state, logits

    @staticmethod
    def _keep(rows, state, logits, keep: list[int]):
        if not keep:
            return [], None, None
        if len(keep) == len(rows):
            return rows, state, logits
        return [rows[i] for i in keep], state.select(keep), None if logits is None else logits[keep]
