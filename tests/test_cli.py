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
    assert info["params_actual"] == info["params_formula_3nd_2Vd"] == 3 * c.n * c.D + 2 * c.vocab_size * c.D
    assert info["flops_per_token_decode"] == 2 * (5 * c.n * c.D * c.n_layer + c.D * c.vocab_size)
    assert info["state_floats_per_sequence"] == c.n_layer * c.n * c.D
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
    import bdh.model

    calls = []
    real = bdh.model.sparse_step_layer
    monkeypatch.setattr(bdh.model, "sparse_step_layer", lambda *a, **k: calls.append(1) or real(*a, **k))
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
    ],
)
def test_cli_errors_one_line_nonzero(argv, msg, model_dir):
    argv = [str(model_dir) if a == "MODEL" else a for a in argv]
    r = subprocess.run([sys.executable, "-m", "bdh", *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1
