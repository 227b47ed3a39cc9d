"""Model merging (§7.1): neuron concatenation, summed attention scores, refusals, CLI."""

import types

import pytest
import torch

from bdh import BDH
from bdh.analysis.cli import register
from bdh.analysis.merge import MergeError, merge_models, merge_pretrained, merged_config
from bdh.analysis.record import run_with_cache
from bdh.tokenization import get_tokenizer

from conftest import tiny_config


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    a = BDH(tiny_config()).eval()
    b = BDH(tiny_config(mlp_internal_dim_multiplier=4, rope_theta=1000.0)).eval()  # other N and frequencies
    with torch.no_grad():
        b.embed.weight.copy_(a.embed.weight)  # same layer-0 input, so scores are comparable
    return a, b


def test_shapes_and_per_neuron_tensors(pair):
    a, b = pair
    m = merge_models(a, b)
    Na, Nb, h, d = a.config.N, b.config.N, a.config.n_head, a.config.D
    assert m.config.N == Na + Nb and m.config.n_embd == d and m.config.n_head == h
    assert torch.equal(m.freqs, torch.cat([a.freqs, b.freqs]))  # carried per neuron, not recomputed
    assert m.freqs.dtype == torch.float64
    assert torch.equal(m.encoder[:, :, :Na], a.encoder) and torch.equal(m.encoder_v[:, :, Na:], b.encoder_v)
    dec = m.decoder.view(h, Na + Nb, d)
    assert torch.equal(dec[:, :Na], a.decoder.view(h, Na, d)) and torch.equal(dec[:, Na:], b.decoder.view(h, Nb, d))
    assert torch.allclose(m.lm_head, (a.lm_head + b.lm_head) / 2)
    assert m.num_params() == m.config.num_params()


def test_merged_scores_are_the_sum_of_the_two_models(pair):
    a, b = pair
    m = merge_models(a, b)
    idx = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    names = ["blocks.0.scores", "blocks.0.x_sparse", "blocks.0.xy"]
    ca, cb, cm = (run_with_cache(x, idx, names)[1] for x in (a, b, m))
    assert torch.allclose(cm["blocks.0.scores"], ca["blocks.0.scores"] + cb["blocks.0.scores"], atol=1e-5)
    assert torch.equal(cm["blocks.0.x_sparse"], torch.cat([ca["blocks.0.x_sparse"], cb["blocks.0.x_sparse"]], -1))
    # E y of the merged layer is E_A y_A + E_B y_B of its two neuron groups (the merge is not an ensemble)
    xy = cm["blocks.0.xy"]  # (B, h, T, Na + Nb)
    B, h, T, _ = xy.shape
    Na = a.config.N
    flat = lambda t: t.transpose(1, 2).reshape(B, T, -1)  # noqa: E731
    ey = flat(xy) @ m.decoder
    assert torch.allclose(ey, flat(xy[..., :Na]) @ a.decoder + flat(xy[..., Na:]) @ b.decoder, atol=1e-5)


def test_incompatible_models_are_refused(pair):
    a, _ = pair
    for kw, field in ((dict(n_embd=64), "n_embd"), (dict(n_head=2), "n_head"), (dict(vocab_size=300), "vocab_size"),
                      (dict(n_layer=3), "n_layer"), (dict(damping="alibi"), "damping")):
        with pytest.raises(MergeError, match=field):
            merge_models(a, BDH(tiny_config(**kw)))
    fake = types.SimpleNamespace(N=6, n_embd=32, n_head=4)
    with pytest.raises(MergeError, match="not representable"):
        merged_config(fake, fake)
    with pytest.raises(ValueError, match="alpha"):
        merge_models(a, a, alpha=2.0)
    b = BDH(tiny_config())
    a.tokenizer, b.tokenizer = get_tokenizer("bytes"), get_tokenizer("gpt2")
    try:
        with pytest.raises(MergeError, match="tokenizers differ"):
            merge_models(a, b)
    finally:
        del a.tokenizer


def test_merge_pretrained_and_cli(pair, tmp_path, capsys):
    import argparse

    a, b = pair
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    m = merge_pretrained(tmp_path / "a", tmp_path / "b", tmp_path / "m")
    loaded = BDH.from_pretrained(tmp_path / "m")
    idx = torch.randint(0, 256, (1, 20))
    assert torch.allclose(loaded(idx)[0], m(idx)[0]) and torch.equal(loaded.freqs, m.freqs)
    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="command"))
    args = p.parse_args(["merge", str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "m2")])
    assert args.func(args) == 0 and f"N={a.config.N + b.config.N}" in capsys.readouterr().out
    BDH(tiny_config(n_head=2)).save_pretrained(tmp_path / "c")
    args = p.parse_args(["merge", str(tmp_path / "a"), str(tmp_path / "c"), "-o", str(tmp_path / "m3")])
    with pytest.raises(MergeError, match="n_head differs"):
        args.func(args)


def test_merge_experiment_runs_end_to_end(tmp_path):
    import json

    from bdh.analysis.merge import merge_experiment
    from bdh.tokenization import ByteTokenizer

    torch.manual_seed(0)
    BDH(tiny_config(n_head=2, mlp_internal_dim_multiplier=2)).save_pretrained(tmp_path / "base", tokenizer=ByteTokenizer())
    (tmp_path / "a.txt").write_text("the cat sat on the mat.\n" * 300)
    (tmp_path / "b.txt").write_text("zyx wvu tsr qpo\n" * 400)
    rep = merge_experiment(tmp_path / "base", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), tmp_path / "exp", steps=2, batch_size=2,
                           block_size=32, eval_tokens=256)
    assert rep["N_merged"] == 2 * rep["N_base"]
    assert set(rep["validation"]) == {"base", "+A", "+B", "merged"}
    assert all(r["A"]["loss"] > 0 and r["B"]["bpb"] > 0 for r in rep["validation"].values())
    assert json.loads((tmp_path / "exp" / "merge_experiment.json").read_text())["steps"] == 2
    assert BDH.from_pretrained(tmp_path / "exp" / "merged").config.N == rep["N_merged"]


def test_main_cli_integration_one_line_errors(pair, tmp_path, monkeypatch, capsys):
    """With bdh.analysis.cli in bdh.cli.COMMAND_MODULES: `bdh merge` works and bad input is one line, exit 1."""
    import bdh.cli

    if "bdh.analysis.cli" not in bdh.cli.COMMAND_MODULES:
        monkeypatch.setattr(bdh.cli, "COMMAND_MODULES", (*bdh.cli.COMMAND_MODULES, "bdh.analysis.cli"))
    a, _ = pair
    a.save_pretrained(tmp_path / "a")
    BDH(tiny_config(vocab_size=300)).save_pretrained(tmp_path / "v")
    assert bdh.cli.main(["merge", str(tmp_path / "a"), str(tmp_path / "a"), "-o", str(tmp_path / "aa")]) == 0
    assert BDH.from_pretrained(tmp_path / "aa").config.N == 2 * a.config.N
    capsys.readouterr()
    assert bdh.cli.main(["merge", str(tmp_path / "a"), str(tmp_path / "v"), "-o", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vocab_size differs" in err[0]
    assert bdh.cli.main(["analyze", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 1
    assert "does not exist" in capsys.readouterr().err


def _tiny_experiment_inputs(tmp_path):
    from bdh.tokenization import ByteTokenizer

    torch.manual_seed(0)
    BDH(tiny_config(n_head=2, mlp_internal_dim_multiplier=2)).save_pretrained(tmp_path / "base", tokenizer=ByteTokenizer())
    (tmp_path / "a.txt").write_text("the cat sat on the mat.\n" * 300)
    (tmp_path / "b.txt").write_text("zyx wvu tsr qpo\n" * 400)
    return str(tmp_path / "base"), str(tmp_path / "a.txt"), str(tmp_path / "b.txt")


def _main_with_analysis(monkeypatch):
    import bdh.cli

    if "bdh.analysis.cli" not in bdh.cli.COMMAND_MODULES:
        monkeypatch.setattr(bdh.cli, "COMMAND_MODULES", (*bdh.cli.COMMAND_MODULES, "bdh.analysis.cli"))
    return bdh.cli.main


def test_merge_experiment_cli_writes_the_table(tmp_path, monkeypatch, capsys):
    import json
    import math

    main = _main_with_analysis(monkeypatch)
    base, a, b = _tiny_experiment_inputs(tmp_path)
    out = tmp_path / "exp"
    assert main(["merge-experiment", "--base", base, "--a", a, "--b", b, "--out", str(out), "--steps", "2",
                 "--batch-size", "2", "--block-size", "32", "--eval-tokens", "128", "--quiet"]) == 0
    printed = capsys.readouterr().out
    table = (out / "merge_experiment.md").read_text()
    assert table in printed
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [r.split("|")[1].strip().split(" ")[0] for r in rows] == ["base", "+A", "+B", "merged"]
    rep = json.loads((out / "merge_experiment.json").read_text())
    vals = [v for r in rep["validation"].values() for c in ("A", "B") for v in (r[c]["loss"], r[c]["bpb"])]
    assert len(vals) == 16 and all(math.isfinite(v) and v > 0 for v in vals)
    sizes = rep["models"]
    assert sizes["merged"]["n"] == 2 * sizes["base"]["n"] and f"{sizes['merged']['params']:,}" in rows[3]
    assert sizes["+A"]["params"] == sizes["base"]["params"]
    for r in rows:  # 7 columns: model, n, params, then loss / bpb on A and on B
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert len(cells) == 7 and all(math.isfinite(float(c)) for c in cells[3:])


@pytest.mark.parametrize("extra, needle", [
    (["--steps", "0"], "--steps 0"),
    (["--lr", "-1"], "--lr -1"),
    (["--block-size", "1"], "--block-size 1"),
    (["--a", "no/such/corpus.txt"], "no/such/corpus.txt"),
    (["--base", "missing-model"], "missing-model"),
])
def test_merge_experiment_cli_bad_input_leaves_files(tmp_path, monkeypatch, capsys, extra, needle):
    main = _main_with_analysis(monkeypatch)
    base, a, b = _tiny_experiment_inputs(tmp_path)
    out = tmp_path / "exp"
    out.mkdir()
    (out / "merge_experiment.md").write_text("previous table\n")
    args = {"--base": base, "--a": a, "--b": b, "--out": str(out), "--steps": "1", "--batch-size": "2",
            "--block-size": "32", "--eval-tokens": "64"}
    args.update(dict(zip(extra[::2], extra[1::2])))
    if args["--base"] == "missing-model":
        args["--base"] = str(tmp_path / "missing-model")
    capsys.readouterr()
    assert main(["merge-experiment", *[x for kv in args.items() for x in kv], "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if "Warning" not in line]
    assert len(err) == 1 and needle in err[0] and err[0].startswith("bdh merge-experiment: error:")
    assert (out / "merge_experiment.md").read_text() == "previous table\n"
    assert sorted(p.name for p in out.iterdir()) == ["merge_experiment.md"]


def test_merge_experiment_library_checks_settings(tmp_path):
    from bdh.analysis.merge import merge_experiment

    for kw, name in ((dict(steps=0), "steps=0"), (dict(batch_size=-1), "batch_size=-1"), (dict(lr=0.0), "lr=0.0"),
                     (dict(eval_tokens=1), "eval_tokens=1")):
        with pytest.raises(ValueError, match=name):
            merge_experiment(tmp_path / "nothing", "a", "b", tmp_path / "out", **kw)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        merge_experiment(tmp_path / "nothing", "a", "b", tmp_path / "out")
    assert not (tmp_path / "out").exists()
