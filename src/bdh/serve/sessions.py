"""Persistent sessions of `bdh serve`: a conversation's model state, saved after every turn.

A session is one row of a model's inference state (BDH: rho per layer, a constant size; the GPT baseline: its
KV cache, growing per token) plus the last logits (V,) (the next-token distribution, so a continuation with an
empty prompt samples exactly what an uninterrupted run would) and a little metadata. Each session is one file,
`<dir>/<id>.safetensors`, holding `state.*` (the model's `state_to_tensors`), `logits`, and JSON metadata in the
safetensors header; it is written atomically (`bdh.checkpoint.save_tensors`, via `bdh.io.atomic_path`) before a
request that changed it returns, so a server killed at any moment restarts with every session intact.

A write that fails (a full disk) raises EngineError 507 (`insufficient_storage`; other errors 500) and changes
nothing: a new session is not created, a session keeps its last saved state. A file that cannot be read when the
store opens (truncated, not safetensors, another format) is moved into `<dir>/unreadable/`, never deleted, and
listed in `store.unreadable` (id -> why and where); a request for its id is told so (410 `session_unreadable`).

In memory, states are cached up to `memory_cap` bytes; the least recently used are dropped (they are on disk)
and read back on their next use. One request at a time may hold a session (`acquire` ... `commit`/`release`);
a second gets 409.

    store = SessionStore("sessions", {"m": model}, {"m": model_fingerprint(DIR)}, memory_cap=256 << 20)
    info = store.create("m")
    held = store.acquire(info["id"], "m")              # state, logits, n_tokens
    store.commit(held, new_state, new_logits, added_tokens=12)
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import json
import logging
import os
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import save_tensors
from .engine import EngineError

FORMAT = "bdh-serve-session"
SESSION_ID = re.compile(r"sess_[0-9a-f]{24}")
SUFFIX = ".safetensors"
UNREADABLE = "unreadable"  # the folder of the sessions directory where unreadable session files are moved
NO_ROOM = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}  # a write failing with these: 507 Insufficient Storage

log = logging.getLogger("bdh.serve")


def new_session_id() -> str:
    return "sess_" + secrets.token_hex(12)


@dataclasses.dataclass
class _Entry:
    id: str
    model: str
    n_tokens: int
    created: float
    updated: float
    file_bytes: int
    state: Any = None  # in memory, or None (on disk only)
    logits: torch.Tensor | None = None
    has_logits: bool = False
    nbytes: int = 0  # bytes of the in-memory state and logits
    busy: bool = False


@dataclasses.dataclass
class Held:
    """A session acquired by one request."""

    id: str
    model: str
    state: Any
    logits: torch.Tensor | None
    n_tokens: int


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class SessionStore:
    """Sessions of the served models in one directory; `models` maps a model id to its model (for the state
    conversion) and `fingerprints` to a string identifying its weights (a session is refused by other weights)."""

    def __init__(self, directory: str | os.PathLike, models: dict[str, Any], fingerprints: dict[str, str], *,
                 memory_cap: int = 256 << 20, max_sessions: int = 10000):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # conversations: readable by this user only
        self.models, self.fingerprints = models, fingerprints
        self.memory_cap, self.max_sessions = memory_cap, max_sessions
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._lru: collections.OrderedDict[str, None] = collections.OrderedDict()  # in-memory ids, oldest first
        self.memory_bytes = 0
        self.evictions = 0
        self.unreadable: dict[str, str] = {}  # id -> why its file was unreadable at start, and where it was moved
        self._scan()

    # ------------------------------------------------------------------ disk
    def _path(self, sid: str) -> Path:
        return self.dir / f"{sid}{SUFFIX}"

    def _scan(self) -> None:
        """Index the sessions on disk (headers only), remove temporary files left by a killed write and move
        unreadable session files aside (`_set_aside`)."""
        from safetensors import safe_open

        for p in sorted(self.dir.iterdir()):
            if p.name.startswith(".sess_") and p.name.endswith(".tmp"):
                p.unlink(missing_ok=True)  # an interrupted atomic write: the session file itself is intact
                continue
            sid = p.name[: -len(SUFFIX)] if p.name.endswith(SUFFIX) else None
            if sid is None or not SESSION_ID.fullmatch(sid) or not p.is_file():
                continue
            try:
                with safe_open(str(p), "pt") as f:
                    meta = f.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise ValueError(f"format {meta.get('format')!r}, expected {FORMAT!r}")
                info = json.loads(meta["session"])
                self._entries[sid] = _Entry(sid, str(info["model"]), int(info["n_tokens"]), float(info["created"]),
                                            float(info["updated"]), p.stat().st_size,
                                            has_logits=bool(info.get("has_logits")))
            except Exception as err:  # noqa: BLE001 -- an unreadable file is moved aside, never fatal
                why = f"{type(err).__name__}: {err}" if isinstance(err, KeyError) else str(err) or type(err).__name__
                self._set_aside(p, sid, why.splitlines()[0])

    def _set_aside(self, p: Path, sid: str, why: str) -> None:
        """Move an unreadable session file into `<dir>/unreadable/` (never deleted: it may be recovered by hand)."""
        aside = self.dir / UNREADABLE
        dest = aside / p.name
        for i in range(1, 1000):
            if not dest.exists():
                break
            dest = aside / f"{p.name}.{i}"  # one moved aside before, by an earlier start
        try:
            aside.mkdir(exist_ok=True, mode=0o700)
            os.replace(p, dest)
        except OSError as err:
            where = f"left in place: it could not be moved to {dest} ({err})"
            self.unreadable[sid] = f"its file is unreadable ({why}) and was {where}"
        else:
            where = f"moved to {dest}"
            self.unreadable[sid] = (f"its file was unreadable when the server started ({why}) and was moved to "
                                    f"{UNREADABLE}/{dest.name} in the sessions directory")
        log.warning("session file %s is unreadable (%s): %s", p, why, where)

    def _write(self, e: _Entry, state, logits, n_tokens: int, updated: float, new: bool = False) -> int:
        """Save a session's file (atomically); its size. A failed write: EngineError 507 for lack of room (else
        500) naming the errno, the file as it was."""
        model = self.models[e.model]
        tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_to_tensors(state, "state.").items()}
        if logits is not None:
            tensors["logits"] = logits.detach().float().contiguous().cpu()
        info = {"id": e.id, "model": e.model, "fingerprint": self.fingerprints.get(e.model, ""),
                "n_tokens": n_tokens, "created": e.created, "updated": updated, "has_logits": logits is not None}
        path = self._path(e.id)
        try:
            save_tensors(path, tensors, {"format": FORMAT, "session": json.dumps(info)})  # atomic
            return path.stat().st_size
        except OSError as err:
            log.warning("session %s: %s", e.id, err)  # with the path, for the operator
            room = err.errno in NO_ROOM
            what = f"a new session of model {e.model!r}" if new else f"session {e.id}"
            why = f"[Errno {err.errno}] {os.strerror(err.errno)}" if err.errno else str(err)
            raise EngineError(f"{'no room to save' if room else 'could not save'} {what} "
                              f"({_nbytes(tensors.values()):,} bytes) on the server: {why}"
                              + (": no session was created" if new else ""), 507 if room else 500,
                              "insufficient_storage" if room else "session_write_failed") from None

    def _read(self, e: _Entry):
        from safetensors import SafetensorError, safe_open

        path = self._path(e.id)
        model = self.models[e.model]
        try:
            with safe_open(str(path), "pt", device=str(model.device)) as f:
                info = json.loads((f.metadata() or {})["session"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, KeyError, ValueError) as err:
            raise EngineError(f"session {e.id}: its file {path} is unreadable ({err})", 500, "session_corrupt") from None
        want = self.fingerprints.get(e.model, "")
        if info.get("fingerprint", "") != want:
            raise EngineError(f"session {e.id} was made with other weights than model {e.model!r} has now", 409,
                              "session_model_changed")
        st = {k[len("state."):]: v for k, v in tensors.items() if k.startswith("state.")}
        state = model.state_from_tensors(st, device=model.device)
        return state, tensors.get("logits")

    # ------------------------------------------------------------------ memory (LRU)
    def _remember(self, e: _Entry, state, logits) -> None:
        """Keep a state in memory (under the lock), evicting least recently used idle states over the cap."""
        self._forget(e)
        e.state, e.logits = state, logits
        e.nbytes = _nbytes(self.models[e.model].state_to_tensors(state).values()) + (
            0 if logits is None else _nbytes([logits]))
        self._lru[e.id] = None
        self.memory_bytes += e.nbytes
        for sid in list(self._lru):
            if self.memory_bytes <= self.memory_cap:
                break
            old = self._entries[sid]
            if old is e or old.busy:
                continue
            self._forget(old)
            self.evictions += 1

    def _forget(self, e: _Entry) -> None:
        if e.id in self._lru:
            del self._lru[e.id]
            self.memory_bytes -= e.nbytes
        e.state, e.logits, e.nbytes = None, None, 0

    # ------------------------------------------------------------------ API
    def _get(self, sid: str, served: bool = False) -> _Entry:
        if isinstance(sid, str) and sid in self.unreadable:
            raise EngineError(f"session {sid} is not available: {self.unreadable[sid]}", 410, "session_unreadable")
        if not isinstance(sid, str) or not SESSION_ID.fullmatch(sid) or sid not in self._entries:
            raise EngineError(f"session {sid!r} does not exist", 404, "session_not_found")
        e = self._entries[sid]
        if served and e.model not in self.models:
            raise EngineError(f"session {sid} belongs to model {e.model!r}, which this server does not serve", 409,
                              "session_model_not_served")
        return e

    def info(self, sid: str) -> dict:
        with self._lock:
            return self._info(self._get(sid))

    @staticmethod
    def _info(e: _Entry) -> dict:
        return {"id": e.id, "object": "session", "model": e.model, "n_tokens": e.n_tokens, "created": int(e.created),
                "updated": int(e.updated), "file_bytes": e.file_bytes, "in_memory": e.state is not None,
                "busy": e.busy}

    def list(self, model: str | None = None) -> list[dict]:
        with self._lock:
            es = sorted(self._entries.values(), key=lambda e: e.created)
            return [self._info(e) for e in es if model is None or e.model == model]

    def create(self, model: str) -> dict:
        """A new empty session of `model` (position 0, no logits yet), written to disk."""
        if model not in self.models:
            raise EngineError(f"model {model!r} does not exist", 404, "model_not_found")
        state = self.models[model].init_state(1)
        return self._new(model, state, None, 0)

    def _new(self, model: str, state, logits, n_tokens: int) -> dict:
        with self._lock:
            if len(self._entries) >= self.max_sessions:
                raise EngineError(f"the server holds its maximum of {self.max_sessions} sessions: delete some first",
                                  409, "session_limit")
            sid = new_session_id()
            now = time.time()
            e = self._entries[sid] = _Entry(sid, model, n_tokens, now, now, 0, busy=True)
        try:
            e.file_bytes = self._write(e, state, logits, n_tokens, now, new=True)
        except BaseException:
            with self._lock:
                self._entries.pop(sid, None)
            raise
        with self._lock:
            e.busy, e.has_logits = False, logits is not None
            self._remember(e, state, logits)
            return self._info(e)

    def acquire(self, sid: str, model: str | None = None) -> Held:
        """Hold a session for one request (409 if another holds it; 400 if it belongs to another model)."""
        with self._lock:
            e = self._get(sid, served=True)
            if model is not None and e.model != model:
                raise EngineError(f"session {sid} belongs to model {e.model!r}, not {model!r}", 400, "session_model")
            if e.busy:
                raise EngineError(f"session {sid} is in use by another request: retry when it has finished", 409,
                                  "session_busy")
            e.busy = True
            state, logits = e.state, e.logits
            if state is not None:
                self._lru.move_to_end(sid)
        if state is None:
            try:
                state, logits = self._read(e)
            except BaseException:
                self.release(sid)
                raise
            with self._lock:
                self._remember(e, state, logits)
        return Held(sid, e.model, state, logits, e.n_tokens)

    def commit(self, held: Held, state, logits: torch.Tensor, added_tokens: int) -> dict:
        """Save the session's new state (atomically, on disk first), then release it."""
        with self._lock:
            e = self._get(held.id)
        try:
            now = time.time()
            n = e.n_tokens + added_tokens
            size = self._write(e, state, logits, n, now)
            with self._lock:
                e.n_tokens, e.updated, e.file_bytes, e.has_logits, e.busy = n, now, size, True, False
                self._remember(e, state, logits)
                return self._info(e)
        finally:
            self.release(held.id)

    def release(self, sid: str) -> None:
        with self._lock:
            e = self._entries.get(sid)
            if e is not None:
                e.busy = False

    def fork(self, sid: str) -> dict:
        """A new session holding a copy of `sid`'s last saved state."""
        with self._lock:
            e = self._get(sid, served=True)
            state, logits, n, model = e.state, e.logits, e.n_tokens, e.model
        if state is None:
            state, logits = self._read(e)
        return self._new(model, state, logits, n)

    def logits(self, sid: str) -> tuple[dict, torch.Tensor | None]:
        with self._lock:
            e = self._get(sid, served=True)
            info, logits, cached = self._info(e), e.logits, e.state is not None
        if not cached and e.has_logits:
            _, logits = self._read(e)
        return info, logits

    def delete(self, sid: str) -> None:
        with self._lock:
            e = self._get(sid)
            if e.busy:
                raise EngineError(f"session {sid} is in use by a request: retry when it has finished", 409,
                                  "session_busy")
            self._forget(e)
            del self._entries[sid]
            self._path(sid).unlink(missing_ok=True)

    def stats(self) -> dict:
        with self._lock:
            return {"sessions": len(self._entries), "in_memory": len(self._lru), "memory_bytes": self.memory_bytes,
                    "memory_cap": self.memory_cap, "evictions": self.evictions, "unreadable": len(self.unreadable)}
