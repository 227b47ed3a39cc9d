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
ARG_CASES = [
    (["generate", "--model", "{W}/model", "--prompt", "x", "--threads", "0"], ("--threads", "0")),
    (["generate", "--model", "{W}/model", "--prompt", "x", "--device", "nope"], ("nope",)),
]


@pytest.mark.parametrize("args,words", ARG_CASES, ids=[" ".join(a[:1] + a[3:]) for a, _ in ARG_CASES])
def test_bad_command_line_values(workdir, args, words):
    check_case(workdir, args, words)
