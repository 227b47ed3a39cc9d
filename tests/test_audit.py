"""The hostile audit, kept in the suite (issue 13): every bad input through the real CLI in a subprocess.

Each case runs `python -m bdh.cli ARGS` and asserts: the exit status is non-zero, stderr ends in one line (no
traceback) that contains the expected words (the offending value), and every file under the case's directory
is unchanged (sha256 before and after). Cases are grouped by area; each group is one table.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bdh import BDH

from conftest import tiny_config


def run_cli(args: list[str], cwd: Path, timeout: float = 300, env: dict | None = None,
            preexec_fn=None) -> subprocess.CompletedProcess:
    """`python -m bdh.cli ARGS` in `cwd`, one thread, no stdin."""
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "bdh.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=e, stdin=subprocess.DEVNULL, preexec_fn=preexec_fn)


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (relative path -> digest)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_clean_error(r: subprocess.CompletedProcess, *words: str) -> None:
    """Non-zero exit, no traceback, and a last stderr line naming every one of `words`."""
    assert r.returncode != 0, f"exit 0 for a bad input; stdout: {r.stdout[-500:]}"
    err = r.stderr.strip()
    assert "Traceback" not in err, err[-2000:]
    last = err.splitlines()[-1] if err else ""
    for w in words:
        assert w in last, f"{w!r} not in the error line {last!r}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A directory holding a small saved model `model/` (and whatever a group's fixture adds)."""
    root = tmp_path_factory.mktemp("audit")
    torch.manual_seed(0)
    BDH(tiny_config()).eval().save_pretrained(root / "model")
    return root


def check_case(workdir: Path, args: list[str], words: tuple[str, ...]) -> None:
    before = tree_hashes(workdir)
    r = run_cli([a.replace("{W}", str(workdir)) for a in args], cwd=workdir)
    assert_clean_error(r, *words)
    assert tree_hashes(workdir) == before, "files changed by a failing command"


# ----------------------------------------------------------------------------------------------- command-line values
# (args with {W} = the work directory, words expected in the error line)
_AN = ["analyze", "--model", "{W}/model", "--out", "{W}/report"]
_GR = ["graph", "run", "--model", "{W}/model", "--prompt", "x"]
_GK = ["graph", "kl", "--model", "{W}/model"]
ARG_CASES = [
    (["generate", "--model", "{W}/model", "--prompt", "x", "--threads", "0"], ("--threads", "0")),
    (["generate", "--model", "{W}/model", "--prompt", "x", "--device", "nope"], ("nope",)),
    (["compare", "--threads", "0", "--out", "{W}/cmp"], ("--threads", "0")),  # every command that runs a model
    # issue 13, item 7: each numeric option checked where it enters, the flag and the value in the error line
    (_AN + ["--block", "0"], ("--block", "0")),  # before: ZeroDivisionError traceback, report/plots written
    (_AN + ["--threads", "-1"], ("--threads", "-1")),
    (_AN + ["--seed", str(2**64)], ("--seed", str(2**64))),  # before: "Overflow when unpacking long long"
    (_AN + ["--seed", "-1"], ("--seed", "-1")),
    (_AN + ["--max-tokens", "1"], ("--max-tokens", "1")),
    (_AN + ["--sigma-tokens", "0"], ("--sigma-tokens", "0")),  # before: exit 0, section skipped
    (_AN + ["--graph-runs", "0"], ("--graph-runs", "0")),  # before: exit 0, section skipped
    (_AN + ["--fact-periods", "0"], ("--fact-periods", "0")),
    (_AN + ["--synapse-layers", "0"], ("--synapse-layers", "0")),
    (_AN + ["--synapse-layers", "1", "5"], ("--synapse-layers", "5", "[1, 1]")),  # the model has 2 layers
    (_GR + ["--max-new-tokens", "-1"], ("--max-new-tokens", "-1")),  # before: accepted, exit 0
    (_GR + ["--sigma-top", "-1", "--export", "{W}/export"], ("--sigma-top", "-1")),
    (_GR + ["--snapshot-every", "-1"], ("--snapshot-every", "-1")),
    (_GR + ["--budget", "-1"], ("--budget", "-1")),
    (_GR + ["--synapses", "0"], ("--synapses", "0")),
    (_GK + ["--batch", "0"], ("--batch", "0")),
    (_GK + ["--seq-len", "0"], ("--seq-len", "0")),
    (_GK + ["--points", "0"], ("--points", "0")),
    (_GK + ["--budgets", "64", "-1"], ("--budgets", "-1")),
    (["graph", "info", "--model", "{W}/model", "--synapses", "-3"], ("--synapses", "-3")),
    (["info", "--model", "{W}/model", "--threads", "0"], ("--threads", "0")),
    (["info", "--model", "{W}/model", "--threads", "100000"], ("--threads", "100000", "at most")),  # was a segfault
    (["info", "--model", "{W}/model", "--threads", str(2**64)], ("--threads", str(2**64))),  # was an overflow
    (["merge", "{W}/model", "{W}/model", "-o", "{W}/merged", "--alpha", "2"], ("--alpha", "2")),
    (["merge", "{W}/model", "{W}/model", "-o", "{W}/merged", "--alpha", "nan"], ("--alpha", "nan")),
    (["compare", "--rungs", "0", "--out", "{W}/cmp"], ("--rungs", "0")),
]


@pytest.mark.parametrize("args,words", ARG_CASES,
                         ids=[" ".join(x for x in a if "{W}" not in x and x != "--model") for a, _ in ARG_CASES])
def test_bad_command_line_values(workdir, args, words):
    check_case(workdir, args, words)


# ----------------------------------------------------------------------------------------------- corrupt models, options
# (issue 13, items 2 and 10) a model with a NaN weight, a header edited to tag weights I32, a GPT for `--sparse on`;
# options that `bdh generate` printed the prompt before refusing: nothing may reach stdout.
@pytest.fixture(scope="module")
def model_cases(workdir) -> Path:
    from bdh.baselines import GPT, GPTConfig
    from test_checkpoint_state import retag_tensor, save_with_nan

    torch.manual_seed(0)
    save_with_nan(BDH(tiny_config()).eval(), workdir / "nan_model", "decoder")
    BDH(tiny_config()).eval().save_pretrained(workdir / "i32_model")
    retag_tensor(workdir / "i32_model" / "model.safetensors", "lm_head", "I32")
    GPT(GPTConfig(n_layer=1, n_embd=16, n_head=2)).eval().save_pretrained(workdir / "gpt_model")
    huge = BDH(tiny_config()).eval()
    with torch.no_grad():
        for p in huge.parameters():
            p.fill_(3e38)  # finite weights whose logits overflow
    huge.save_pretrained(workdir / "huge_model")
    (workdir / "corpus.txt").write_text("a small corpus for bdh eval, long enough to evaluate. " * 40)
    return workdir


_GEN = ["generate", "--model", "{W}/model", "--prompt", "x"]
MODEL_CASES = [
    (["generate", "--model", "{W}/nan_model", "--prompt", "x"], ("nan_model", "'decoder'", "non-finite")),
    (["generate", "--model", "{W}/nan_model", "--prompt", "x", "--temperature", "0"], ("'decoder'", "non-finite")),
    (["eval", "--model", "{W}/nan_model", "--data", "{W}/corpus.txt"], ("'decoder'", "non-finite")),
    (["generate", "--model", "{W}/i32_model", "--prompt", "x"], ("'lm_head'", "torch.int32", "floating-point")),
    (["eval", "--model", "{W}/i32_model", "--data", "{W}/corpus.txt"], ("'lm_head'", "torch.int32")),
    (["info", "--model", "{W}/i32_model"], ("'lm_head'", "torch.int32")),
    (_GEN + ["--temperature", "-1"], ("temperature=-1.0",)),
    (_GEN + ["--temperature", "nan"], ("temperature=nan",)),
    (_GEN + ["--temperature", "inf"], ("temperature=inf",)),
    (_GEN + ["--top-k", "0"], ("top_k=0",)),
    (_GEN + ["--top-p", "1.5"], ("top_p=1.5",)),
    (_GEN + ["--top-p", "0"], ("top_p=0.0",)),
    (_GEN + ["--max-new-tokens", "-1"], ("max_new_tokens=-1",)),
    (["generate", "--model", "{W}/gpt_model", "--prompt", "x", "--sparse", "on"], ("sparse=True", "GPT")),
    # (issue 23, item 4) finite weights up to 3e38: the logits are not finite (before: the prompt printed first)
    (["generate", "--model", "{W}/huge_model", "--prompt", "x"], ("non-finite",)),
    # (issue 23, item 8) a file given as --model (before: "model directory ... does not exist")
    (["generate", "--model", "{W}/model/config.json", "--prompt", "x"], ("config.json'", "is a file", "directory")),
    (["info", "--model", "{W}/model/model.safetensors"], ("model.safetensors'", "is a file")),
]


@pytest.mark.parametrize("args,words", MODEL_CASES, ids=[" ".join(a[:1] + a[2:3] + a[5:]) for a, _ in MODEL_CASES])
def test_corrupt_models_and_bad_generate_options(model_cases, args, words):
    """One clean error line, files unchanged, and nothing on stdout (before: the prompt, or NUL bytes, or 'loss nan')."""
    before = tree_hashes(model_cases)
    r = run_cli([a.replace("{W}", str(model_cases)) for a in args], cwd=model_cases)
    assert_clean_error(r, *words)
    assert r.stdout == "", f"printed before the error: {r.stdout[:200]!r}"
    assert tree_hashes(model_cases) == before, "files changed by a failing command"


# ----------------------------------------------------------------------------------------------- training runs
# (issue 13, items 1, 4, 8; --threads) `bdh train` onto a saved model or its own input, resumes from hand-edited or
# damaged checkpoints, from a corpus that changed since the run started, and a full disk while training.
TRAIN = ["train", "--config", "tiny", "--no-progress", "--data", "corpus.txt", "--set", "train.sample_tokens=4",
         "--set", "train.checkpoint_every=5"]
STEP10 = "checkpoints/step-00000010"


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> Path:
    """corpus.txt (40 kB), finished 10-step runs `run/` (random crops) and `tbptt/` with checkpoints at steps 5 and
    10, and a saved model `saved/` (no run files). Cases copy it: it is never changed."""
    import pydoc_data.topics

    root = tmp_path_factory.mktemp("runs")
    (root / "corpus.txt").write_text("".join(pydoc_data.topics.topics.values())[:40_000], encoding="utf-8")
    for name, batching in (("run", "random"), ("tbptt", "tbptt")):
        r = run_cli(TRAIN + ["--out", name, "--set", "train.steps=10", "--set", f"data.batching={batching}"], cwd=root)
        assert r.returncode == 0, r.stderr[-3000:]
    torch.manual_seed(0)
    BDH(tiny_config()).eval().save_pretrained(root / "saved")
    return root


def _edit_json(path: Path, edit) -> None:
    import json

    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(json.dumps(obj))


def _edit_tensors(path: Path, name_index: int, shape: tuple) -> None:
    from safetensors.torch import load_file, save_file

    t = load_file(str(path))
    t[sorted(t)[name_index]] = torch.zeros(shape)
    save_file(t, str(path))


_RESUME = ["--out", "run", "--set", "train.steps=12", "--resume"]
# (id, edit of the copied runs directory W, args run in W, words expected in the error line)
FILE_CASES = [
    ("train onto a saved model", None, TRAIN + ["--out", "saved"], ("'saved'", "already holds a model", "--overwrite")),
    ("train onto its init_from", None, TRAIN + ["--out", "saved", "--set", "train.init_from=saved", "--overwrite"],
     ("'saved'", "input")),
    ("train --threads 0", None, TRAIN + ["--out", "new", "--threads", "0"], ("--threads", "0")),
    ("rank0.json short RNG state", lambda w: _edit_json(w / "run" / STEP10 / "rank0.json",
                                                        lambda m: m["python"].__setitem__(1, m["python"][1][:10])),
     TRAIN + _RESUME + [f"run/{STEP10}"], ("rank0.json", "RNG state")),
    ("rank0.json not JSON", lambda w: (w / "run" / STEP10 / "rank0.json").write_text("{"),
     TRAIN + _RESUME + [f"run/{STEP10}"], ("rank0.json", "unreadable")),
    ("trainer.json scheduler edited", lambda w: _edit_json(w / "run" / STEP10 / "trainer.json",
                                                           lambda m: m.__setitem__("scheduler", 5)),
     TRAIN + _RESUME + [f"run/{STEP10}"], ("trainer.json",)),
    ("weights of the wrong shape", lambda w: _edit_tensors(w / "run" / STEP10 / "model.safetensors", 0, (3, 3)),
     TRAIN + _RESUME + [f"run/{STEP10}"], ("model.safetensors", "shape (3, 3)")),
    ("optimizer state of the wrong shape",
     lambda w: _edit_tensors(w / "run" / STEP10 / "optimizer.safetensors", 0, (3, 3)),
     TRAIN + _RESUME + [f"run/{STEP10}"], ("optimizer.safetensors", "shape (3, 3)")),
    # (issue 23, item 8) a finished run resumed with another model config (before: "nothing to do", exit 0)
    ("finished run, other model config", None, TRAIN + ["--out", "run", "--set", "train.steps=10", "--set",
                                                        "model.n_head=4", "--resume"],
     ("--resume", "another model config", "n_head=2 in the checkpoint, 4 now")),
    ("corpus changed, random crops", lambda w: (w / "corpus.txt").write_text("another corpus, " * 4000),
     TRAIN + _RESUME, ("'corpus.txt'", "changed since the run started")),
    ("corpus changed, TBPTT", lambda w: (w / "corpus.txt").write_text("another corpus, " * 4000),
     TRAIN + ["--set", "data.batching=tbptt", "--out", "tbptt", "--set", "train.steps=12", "--resume"],
     ("'corpus.txt'", "changed since the run started")),
]


@pytest.mark.parametrize("edit,args,words", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_bad_run_directories_and_checkpoints(tiny_runs, tmp_path, edit, args, words):
    """One clean error line naming the file or value, and no file written (no partial run directory)."""
    import shutil

    work = tmp_path / "w"
    shutil.copytree(tiny_runs, work)
    if edit is not None:
        edit(work)
    check_case(work, args, words)
    assert not (work / "new").exists()


def test_resume_rebuilds_a_zeroed_token_cache(tiny_runs, tmp_path):
    """(issue 23, item 8) A token cache zeroed in place keeps its size; --resume must not train on it: the recorded
    SHA-256 no longer matches, so the cache is rebuilt from the corpus and the run goes on."""
    import shutil

    import numpy as np

    from bdh.data import load_tokens

    work = tmp_path / "w"
    shutil.copytree(tiny_runs, work)
    cache = work / "run" / "data" / "train.bytes.bin"
    good = cache.read_bytes()
    cache.write_bytes(bytes(len(good)))
    r = run_cli(TRAIN + _RESUME, cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    assert cache.read_bytes() == good
    assert np.asarray(load_tokens(work / "run" / "data", "train", "bytes")).tobytes() == good


def _file_size_limit(limit: int):
    """preexec_fn: writes past `limit` bytes per file fail with EFBIG (errno 27), as on a full disk."""
    import resource
    import signal

    def set_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return set_limit


def test_full_disk_while_checkpointing_is_one_line_and_keeps_the_checkpoints(tiny_runs, tmp_path):
    """Resumed to step 20 with a 200 kB file limit: the step-15 checkpoint (optimizer.safetensors, 230 kB) cannot
    be written. Before: a SafetensorError traceback. Now: one line with the path and errno, exit 1, the step-10
    checkpoint intact and resumable."""
    import shutil

    from bdh.checkpoint import load_model

    work = tmp_path / "w"
    shutil.copytree(tiny_runs / "run", work / "run")
    shutil.copy(tiny_runs / "corpus.txt", work)
    ckpt = work / "run" / STEP10
    before = tree_hashes(ckpt)
    args = TRAIN + ["--out", "run", "--set", "train.steps=20", "--resume"]
    r = run_cli(args, cwd=work, preexec_fn=_file_size_limit(200_000))
    assert_clean_error(r, "[Errno 27]", "checkpoints/step-00000015", "optimizer.safetensors", f"run/{STEP10} is intact")
    assert tree_hashes(ckpt) == before
    assert sorted(p.name for p in (work / "run" / "checkpoints").iterdir()) == ["best", "step-00000005",
                                                                              "step-00000010"]  # no staging left
    load_model(ckpt)
    r = run_cli(args, cwd=work)  # the disk has room again: the run continues from step 10
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from run/checkpoints/step-00000010 at step 10" in r.stderr


@pytest.mark.parametrize("processes,limit,words", [
    (1, 10_000, ("[Errno 27]", "data/train.bytes.bin")),  # the token cache (40 kB)
    (2, 200_000, ("[Errno 27]", "step-00000005", "optimizer.safetensors")),  # in a spawned DDP process
], ids=["token cache", "checkpoint in a spawned process"])
def test_full_disk_in_a_new_run_names_the_file(tiny_runs, tmp_path, processes, limit, words):
    """Before: "[Errno 27] File too large" naming no file (the token cache); a SafetensorError traceback from the
    spawned process (train.processes = 2). Now: one line with the path and errno, exit 1, no checkpoint."""
    import shutil

    shutil.copy(tiny_runs / "corpus.txt", tmp_path)
    args = TRAIN + ["--out", "new", "--set", "train.steps=5", "--set", "train.eval_every=0",
                    "--set", f"train.processes={processes}", "--set", "train.threads=1"]
    r = run_cli(args, cwd=tmp_path, preexec_fn=_file_size_limit(limit))
    assert_clean_error(r, *words)
    assert not list((tmp_path / "new").glob("checkpoints/step-*"))


# ----------------------------------------------------------------------------------------------- merge, compare, --concept
# (issue 13, items 1, 7, 10) outputs onto an input or over a model, a corpus checked only after training started,
# sentence files that are missing, empty, binary or not files at all.
@pytest.fixture(scope="module")
def merge_cases(workdir) -> Path:
    """`model2/` (a second model), `exp/merged/` (an earlier experiment's model), sentence files, a compare
    directory whose run `cmpdir/0.8M/bdh/` holds a model that is not a finished compare run."""
    torch.manual_seed(1)
    BDH(tiny_config()).eval().save_pretrained(workdir / "model2")
    BDH(tiny_config()).eval().save_pretrained(workdir / "exp" / "merged")
    BDH(tiny_config()).eval().save_pretrained(workdir / "cmpdir" / "0.8M" / "bdh")
    (workdir / "ok.txt").write_text("one sentence.\nanother one.\n")
    (workdir / "empty.txt").write_text("")
    (workdir / "blank.txt").write_text("\n  \n\n")
    (workdir / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (workdir / "nul.txt").write_bytes(b"text\x00with a NUL byte\n")
    (workdir / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    return workdir


_ME = ["merge-experiment", "--a", "pydoc", "--b", "pydoc", "--steps", "1", "--batch-size", "2", "--block-size", "32",
       "--eval-tokens", "64"]
_CONCEPT = ["analyze", "--model", "{W}/model", "--out", "{W}/report", "--contrast", "{W}/ok.txt", "--concept"]
MERGE_CASES = [
    ("merge -o its input A", ["merge", "{W}/model", "{W}/model2", "-o", "{W}/model"], ("model'", "input")),
    ("merge -o its input B --overwrite", ["merge", "{W}/model", "{W}/model2", "-o", "{W}/model2", "--overwrite"],
     ("model2'", "input")),
    ("merge -o a saved model", ["merge", "{W}/model", "{W}/model2", "-o", "{W}/exp/merged"],
     ("merged'", "already holds a model", "--overwrite")),
    ("merge-experiment --out its base", _ME + ["--base", "{W}/model", "--out", "{W}/model"], ("model'", "input")),
    ("merge-experiment over a model", _ME + ["--base", "{W}/model", "--out", "{W}/exp"],
     ("merged'", "already holds a model", "--overwrite")),
    ("merge-experiment onto its base --overwrite", _ME + ["--base", "{W}/exp/merged", "--out", "{W}/exp", "--overwrite"],
     ("merged'", "input")),
    ("merge-experiment --seed 2^63-1", _ME + ["--base", "{W}/model", "--out", "{W}/exp2", "--seed", str(2**63 - 1)],
     ("--seed", str(2**63 - 1))),  # continuation B uses seed + 1
    ("compare --data missing", ["compare", "--data", "{W}/nope.txt", "--out", "{W}/cmp"], ("nope.txt", "does not exist")),
    ("compare --data empty", ["compare", "--data", "{W}/empty.txt", "--out", "{W}/cmp"], ("empty.txt", "empty")),
    ("compare over a model", ["compare", "--out", "{W}/cmpdir"], ("bdh'", "already holds a model", "--overwrite")),
    ("--concept missing", _CONCEPT + ["{W}/nope.txt"], ("--concept", "nope.txt'", "no such file")),
    ("--concept empty", _CONCEPT + ["{W}/empty.txt"], ("--concept", "empty.txt'", "empty")),
    ("--concept blank lines", _CONCEPT + ["{W}/blank.txt"], ("--concept", "blank.txt'", "blank lines")),
    ("--concept binary", _CONCEPT + ["{W}/image.png"], ("--concept", "image.png'", "binary")),
    ("--concept NUL byte", _CONCEPT + ["{W}/nul.txt"], ("--concept", "nul.txt'", "binary")),
    ("--concept latin-1", _CONCEPT + ["{W}/latin1.txt"], ("--concept", "latin1.txt'", "not UTF-8")),
    ("--concept a directory", _CONCEPT + ["{W}/exp"], ("--concept", "exp'", "directory")),
    # (issue 23, item 8) --concept alone: the file's own problem first (before: "--concept and --contrast go together")
    ("--concept alone, missing", _CONCEPT[:5] + ["--concept", "{W}/nope.txt"], ("--concept", "nope.txt'", "no such file")),
    ("--concept alone, empty", _CONCEPT[:5] + ["--concept", "{W}/empty.txt"], ("--concept", "empty.txt'", "empty")),
    ("--concept alone, binary", _CONCEPT[:5] + ["--concept", "{W}/image.png"], ("--concept", "image.png'", "binary")),
    ("--concept alone, good file", _CONCEPT[:5] + ["--concept", "{W}/ok.txt"], ("--concept needs --contrast",)),
    ("--contrast alone, good file", _CONCEPT[:5] + ["--contrast", "{W}/ok.txt"], ("--contrast needs --concept",)),
    ("--contrast missing", ["analyze", "--model", "{W}/model", "--out", "{W}/report", "--concept", "{W}/ok.txt",
                            "--contrast", "{W}/nope.txt"], ("--contrast", "nope.txt'", "no such file")),
]


@pytest.mark.parametrize("args,words", [c[1:] for c in MERGE_CASES], ids=[c[0] for c in MERGE_CASES])
def test_outputs_inputs_and_sentence_files(merge_cases, args, words):
    """One clean error line naming the path, and nothing written (no report, no merged model, no run)."""
    check_case(merge_cases, args, words)
    for made in ("report", "cmp", "exp2", "merged"):
        assert not (merge_cases / made).exists()


# ----------------------------------------------------------------------------------------------- bdh serve: the port
# (issue 23, item 4) `bdh serve` on a port it cannot listen on. Before: it loaded the models, printed its URL, then
# uvicorn's error and exit 3. Now: checked first, one line naming host:port, nothing written (no sessions dir).
# (id, --host, occupy the port first, words expected in the error line; {P} = the port)
SERVE_PORT_CASES = [
    ("port in use", "127.0.0.1", True, ("127.0.0.1:{P}", "in use")),
    ("port in use, by name", "localhost", True, ("localhost:{P}", "in use")),
    ("address not on this machine", "203.0.113.7", False, ("203.0.113.7:{P}", "cannot listen")),
]


@pytest.mark.parametrize("host,occupy,words", [c[1:] for c in SERVE_PORT_CASES], ids=[c[0] for c in SERVE_PORT_CASES])
def test_serve_on_a_port_it_cannot_listen_on(workdir, host, occupy, words):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        if occupy:
            s.listen()
        else:
            s.close()
        before = tree_hashes(workdir)
        r = run_cli(["serve", "--model", "model", "--host", host, "--port", str(port), "--sessions-dir", "sessions"],
                    cwd=workdir, timeout=120)
    assert_clean_error(r, *(w.replace("{P}", str(port)) for w in words))
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # not the URL first
    assert tree_hashes(workdir) == before and not (workdir / "sessions").exists()


# ----------------------------------------------------------------------------------------------- task code and task sizes
# (issue 23, item 2) a user task whose example() raises after the up-front check (before: a 44-line RuntimeError
# traceback, and `tasks train` left tokenizer_config.json behind), sizes, examples per size, vocabularies and layer
# passes beyond the bounds of bdh.tasks (before: a MemoryError, a 20 GB allocation, a model with a 5M-token embedding).
LATE_TASK = '''
from bdh.tasks import Example, Task


class Late(Task):
    """Echo of random bits that fails at length 3 (not a size the old up-front check tried) and at 8 to 99."""
    name = "late"
    vocab = ("<pad>", *(f"t{i}" for i in range(255)))  # 256 tokens: the audit's tiny model
    size_name, train_size = "length", 4

    def example(self, rng, size):
        if size == 3 or 8 <= size < 100:
            raise RuntimeError(f"boom at {size}\\nsecond line")
        bits = [1 + rng.randrange(2) for _ in range(size)]
        return Example(bits, bits, [True] * size)
'''
HUGE_TASK = LATE_TASK.replace("class Late", "class Huge").replace('"late"', '"huge"').replace(
    "range(255)", "range(5_000_000)").replace("size == 3 or 8 <= size < 100", "False")


@pytest.fixture(scope="module")
def task_cases(workdir) -> Path:
    """late_task.py (Late) and huge_task.py (Huge: the same task with a 5,000,001-token vocabulary)."""
    (workdir / "late_task.py").write_text(LATE_TASK)
    (workdir / "huge_task.py").write_text(HUGE_TASK)
    return workdir


_LATE = "{W}/late_task.py:Late"
_TE = ["tasks", "eval", "--model", "{W}/model", "--task", _LATE]
_TT = ["--out", "{W}/task-run", "--steps", "2", "--no-progress"]
TASK_CASES = [
    ("train, example() raises", ["tasks", "train", "--task", _LATE] + _TT, ("'late'", "length=3", "RuntimeError: boom at 3")),
    ("eval, example() raises", _TE + ["--n", "2"], ("'late'", "length=8", "RuntimeError: boom at 8")),
    ("compare --list, example() raises", ["tasks", "compare", "--preset", "smoke", "--tasks", _LATE, "--list"],
     ("'late'", "length=8", "RuntimeError: boom at 8")),
    ("train data.task_size=1e8", ["tasks", "train", "--task", "parity", "--set", "data.task_size=100000000"] + _TT,
     ("length=100000000", "65536")),  # before: MemoryError
    ("eval --sizes 1e7", _TE + ["--sizes", "10000000"], ("length=10000000", "65536")),  # before: 20.5 GB
    ("eval --n 1e8", _TE + ["--sizes", "4", "--n", "100000000"], ("100000000 examples", "33554432")),
    ("train, 5M-token vocabulary", ["tasks", "train", "--task", "{W}/huge_task.py:Huge"] + _TT,
     ("'huge'", "5000001", "65536")),
    ("eval --passes 1e6", _TE + ["--sizes", "4", "--n", "2", "--passes", "1000000"], ("--passes", "1000000", "64")),
]


@pytest.mark.parametrize("args,words", [c[1:] for c in TASK_CASES], ids=[c[0] for c in TASK_CASES])
def test_task_code_errors_and_task_bounds(task_cases, args, words):
    """One clean error line naming the task, the size or value and the error or bound; nothing written (not even
    the task file's __pycache__)."""
    check_case(task_cases, args, words)
    assert not (task_cases / "task-run").exists() and not (task_cases / "__pycache__").exists()


# ----------------------------------------------------------------------------------------------- access keys
# (issue 23, point 7) `bdh view --token` / $BDH_VIEW_TOKEN and `bdh serve --api-key` / $BDH_API_KEY share one
# check (bdh.netsec.AccessKey): refused before anything is loaded or bound, the key itself never echoed
_VIEW = ["view", "--model", "{W}/model", "--port", "0"]
KEY_CASES = [
    ("view --token ''", _VIEW + ["--token", ""], {}, ("--token", "non-empty", "empty one")),
    ("view --token with a space", _VIEW + ["--token", "se cret"], {}, ("--token", "without spaces")),
    ("view $BDH_VIEW_TOKEN with a tab", _VIEW, {"BDH_VIEW_TOKEN": "se\tcret"}, ("$BDH_VIEW_TOKEN", "without spaces")),
    ("view --token with --export", _VIEW + ["--export", "{W}/page.html", "--text", "hi", "--token", "t"], {},
     ("--token", "--export")),
    ("serve --api-key with a newline", ["serve", "--model", "{W}/model", "--port", "0", "--sessions-dir",
                                        "{W}/sessions", "--api-key", "se\ncret"], {}, ("--api-key", "without spaces")),
]


@pytest.mark.parametrize("args,env,words", [c[1:] for c in KEY_CASES], ids=[c[0] for c in KEY_CASES])
def test_bad_access_keys(workdir, args, env, words):
    """One clean error line naming the flag or variable, not the key; nothing written (no page, no sessions)."""
    before = tree_hashes(workdir)
    r = run_cli([a.replace("{W}", str(workdir)) for a in args], cwd=workdir, env=env)
    assert_clean_error(r, *words)
    assert "cret" not in r.stderr and tree_hashes(workdir) == before
    assert not (workdir / "page.html").exists() and not (workdir / "sessions").exists()


# ----------------------------------------------------------------------------------------------- tokenizers
# (issue 23, item 2) a 50257-token model saved without its tokenizer files (before: `bdh generate` encoded the prompt
# as bytes and printed a continuation), a saved tokenizer smaller than the model's vocabulary (before: loaded).
@pytest.fixture(scope="module")
def tokenizer_cases(workdir) -> Path:
    from bdh.tokenization import ByteTokenizer

    torch.manual_seed(0)
    BDH(tiny_config(vocab_size=50257)).eval().save_pretrained(workdir / "gpt2_vocab")
    BDH(tiny_config(vocab_size=300)).eval().save_pretrained(workdir / "v300", tokenizer=ByteTokenizer())
    return workdir


TOKENIZER_CASES = [
    ("50257 tokens, no tokenizer files", ["generate", "--model", "{W}/gpt2_vocab", "--prompt", "x"],
     ("gpt2_vocab: holds no tokenizer files", "bytes (256 tokens)", "vocab_size 50257", "gpt2_tokenizer().save(DIR)")),
    ("a saved tokenizer of 256 tokens, vocab_size 300", ["generate", "--model", "{W}/v300", "--prompt", "x"],
     ("v300", "the tokenizer has 256 tokens but the model's vocab_size is 300", "tokenizer.save(DIR)")),
]


@pytest.mark.parametrize("args,words", [c[1:] for c in TOKENIZER_CASES], ids=[c[0] for c in TOKENIZER_CASES])
def test_tokenizers_not_matching_the_model(tokenizer_cases, args, words):
    """One clean error line naming both sizes and what to save; nothing on stdout (not even the prompt), files
    unchanged."""
    before = tree_hashes(tokenizer_cases)
    r = run_cli([a.replace("{W}", str(tokenizer_cases)) for a in args], cwd=tokenizer_cases)
    assert_clean_error(r, *words)
    assert r.stdout == "", f"printed before the error: {r.stdout[:200]!r}"
    assert tree_hashes(tokenizer_cases) == before, "files changed by a failing command"
