"""`bdh info` and `bdh generate`: output and one-line errors with a non-zero exit."""

import json
import subprocess
import sys

import pytest

from bdh.cli import main


@pytest.fixture()
def model_dir(tmp_path, trained_tiny):
    trained_tiny.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def test_info(model_dir, trained_tiny, capsys):
    assert main(["info", "--model", str(model_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    c = trained_tiny.config
    assert info["model_type"] == "bdh" and info["config"]["n_embd"] == c.n_embd and "hooks" in info["capabilities"]
    assert info["params_actual"] == info["params_formula"] == 3 * c.n * c.D + 2 * c.vocab_size * c.D
    assert info["flops_per_token_decode"] == 2 * (5 * c.n * c.D * c.n_layer + c.D * c.vocab_size)
    assert info["state_bytes_after_1_token"] == c.n_layer * c.n * c.D * 4 + 8  # rho (fp32), pos (int64)
    assert main(["info", "--model", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert f"{info['params_actual']:,}" in out and "ok" in out


def test_generate(model_dir, trained_tiny, capsys):
    from bdh import generate

    assert main(["generate", "--model", str(model_dir), "--prompt", "The ", "--max-new-tokens", "20",
                 "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out == "The " + generate(trained_tiny, "The ", 20, temperature=0) + "\n"


def test_generate_sparse_flag_forces_the_decode_path(model_dir, capsys, monkeypatch):
    import bdh.sparse

    calls = []
    real = bdh.sparse.SparseStepForm.__init__
    monkeypatch.setattr(bdh.sparse.SparseStepForm, "__init__", lambda *a, **k: calls.append(1) or real(*a, **k))
    outs = {}
    for flag in ("on", "off", "auto"):
        calls.clear()
        assert main(["generate", "--model", str(model_dir), "--prompt", "The ", "--max-new-tokens", "20",
                     "--seed", "3", "--sparse", flag]) == 0
        outs[flag] = capsys.readouterr().out
        assert bool(calls) == (flag == "on")  # auto: dense for a model this small (SPARSE_MIN_STATE)
    assert outs["on"] == outs["off"] == outs["auto"]


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["generate", "--model", "/nonexistent/dir", "--prompt", "x"], "does not exist"),
        (["info", "--model", "/nonexistent/dir"], "does not exist"),
        (["generate", "--model", "MODEL", "--prompt", ""], "--prompt is empty"),
        (["generate", "--model", "MODEL", "--prompt", "x", "--top-p", "2"], "top_p=2.0"),
        (["generate", "--model", "MODEL", "--prompt", "x", "--threads", "0"], "--threads 0: expected a positive integer"),
        (["generate", "--model", "MODEL", "--prompt", "x", "--device", "nope"], "--device 'nope': not a torch device"),
        (["analyze", "--model", "MODEL", "--out", "OUT", "--threads", "0"], "--threads 0"),
        (["analyze", "--model", "MODEL", "--out", "OUT", "--device", "nope"], "--device 'nope'"),
        (["graph", "run", "--model", "MODEL", "--prompt", "x", "--threads", "0"], "--threads 0"),
        (["graph", "kl", "--model", "MODEL", "--device", "nope"], "--device 'nope'"),
        (["graph", "info", "--model", "MODEL", "--threads", "-2"], "--threads -2"),
    ],
)
def test_cli_errors_one_line_nonzero(argv, msg, model_dir, tmp_path):
    argv = [{"MODEL": str(model_dir), "OUT": str(tmp_path / "out")}.get(a, a) for a in argv]
    r = subprocess.run([sys.executable, "-m", "bdh.cli", *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_device_without_cuda_is_a_one_line_error(model_dir):
    r = subprocess.run([sys.executable, "-m", "bdh.cli", "generate", "--model", str(model_dir), "--prompt", "x",
                        "--device", "cuda"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "--device 'cuda': CUDA is not available" in r.stderr


def test_resolve_device_and_threads():
    import argparse

    import torch

    from bdh.cli import add_run_options, apply_run_options, resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("nope", "meta", "cuda:99"):
        with pytest.raises(ValueError, match=f"--device '{bad}'"):
            resolve_device(bad)
    p = argparse.ArgumentParser()
    add_run_options(p, threads_default=1)
    n = torch.get_num_threads()
    try:
        assert apply_run_options(p.parse_args(["--threads", "1"])) == torch.device("cpu")
        assert torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="--threads 0: expected a positive integer"):
            apply_run_options(p.parse_args(["--threads", "0"]))
    finally:
        torch.set_num_threads(n)


def test_argparse_range_types():
    """The shared `type=` helpers: one message naming the value and the expected range (argparse adds the flag)."""
    import argparse

    from bdh.cli import SEED_MAX, fraction, int_at_least, nonneg_float, nonneg_int, positive_float, positive_int

    assert positive_int("3") == 3 and nonneg_int("0") == 0 and int_at_least(2, 5)("5") == 5
    assert fraction("0") == 0.0 and fraction("1") == 1.0 and nonneg_float("0") == 0.0 and positive_float("1e-3") == 1e-3
    for parse, text, msg in ((positive_int, "0", "0: expected an integer >= 1"),
                             (nonneg_int, "-1", "-1: expected an integer >= 0"),
                             (positive_int, "x", "'x': expected an integer >= 1"),
                             (int_at_least(0, SEED_MAX - 1), str(SEED_MAX), f"expected an integer in [0, {SEED_MAX - 1}]"),
                             (fraction, "1.5", "1.5: expected a number in [0, 1]"), (fraction, "nan", "nan"),
                             (nonneg_float, "-0.1", "-0.1: expected a finite number >= 0"), (nonneg_float, "inf", "inf"),
                             (positive_float, "0", "0: expected a finite number > 0")):
        with pytest.raises(argparse.ArgumentTypeError, match=msg.replace("[", r"\[").replace("]", r"\]")):
            parse(text)
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=positive_int)
    assert p.parse_args(["--n", "2"]).n == 2


def test_readme_test_command_sets_itself_up_and_ci_runs_exactly_it():
    """Issue 13, item 11: after `pip install -e .` alone, the README's test command must work: it installs the
    `test` extra itself (at the lock file's versions), in every place the README gives it, and `.ci/run` runs that
    very line."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    line = 'pip install -e ".[test]" -c constraints.txt && python -m pytest'
    commands = []
    in_bash = False
    for raw in (root / "README.md").read_text(encoding="utf-8").splitlines():
        if raw.startswith("```"):
            in_bash = raw.strip() == "```bash"
            continue
        cmd = raw.split("#", 1)[0].strip()
        if in_bash and "pytest" in cmd and "-m slow" not in cmd:
            commands.append(cmd)
    assert len(commands) >= 2 and all(c == line for c in commands), commands  # Quick start and Development
    ci = [ln.strip() for ln in (root / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert line in ci
    assert [ln for ln in ci if "pytest" in ln and not ln.startswith("#")] == [line]
    assert not any("[test]" in ln for ln in ci if ln != line and not ln.startswith("#"))  # no set-up of its own


def _crash(args):
    raise RuntimeError("a bug\nsecond line")


@pytest.mark.parametrize("argv,env", [(["--debug", "info", "--model"], None), (["info", "--debug", "--model"], None),
                                      (["info", "--model"], "1")], ids=["before", "after", "BDH_DEBUG"])
def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(monkeypatch, capsys, argv, env):
    """A bug (not bad input) is one line naming the exception, exit 1; `--debug` (before or after the command) or
    BDH_DEBUG=1 lets it propagate with its traceback; bad input under --debug prints the traceback and the line."""
    import bdh.cli as cli

    monkeypatch.delenv("BDH_DEBUG", raising=False)
    with monkeypatch.context() as m:
        m.setattr(cli, "cmd_info", _crash)
        assert main(["info", "--model", "x"]) == 1
        assert capsys.readouterr().err.strip().splitlines() == [
            "bdh info: internal error: RuntimeError: a bug (run again with --debug for the traceback, and please "
            "report it)"]
        if env:
            m.setenv("BDH_DEBUG", env)
        with pytest.raises(RuntimeError, match="a bug"):
            main(argv + ["x"])
    if env:
        monkeypatch.setenv("BDH_DEBUG", env)
    assert main(argv + ["/no/such/model"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("bdh info: error: model directory")
