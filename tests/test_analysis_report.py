"""`bdh analyze`: the report directory (PNGs, JSON of every number, one self-contained HTML page)."""

import argparse
import json
import re

import pytest
import torch

from bdh import BDH
from bdh.analysis.cli import register

from conftest import tiny_config


def _parser():
    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="command"))
    return p


@pytest.mark.slow
def test_analyze_writes_a_self_contained_report(tmp_path, capsys):
    torch.manual_seed(0)
    BDH(tiny_config(n_head=2, mlp_internal_dim_multiplier=2)).save_pretrained(tmp_path / "m")
    (tmp_path / "c.txt").write_text("\n".join(f"The euro fell {i} cents." for i in range(6)) + "\n")
    (tmp_path / "k.txt").write_text("\n".join(f"The vote {i} passed." for i in range(6)) + "\n")
    args = _parser().parse_args([
        "analyze", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "r"), "--corpus", "pydoc",
        "--max-tokens", "512", "--block", "128", "--graph-runs", "1", "--sigma-tokens", "96", "--fact-periods", "2",
        "--concept", str(tmp_path / "c.txt"), "--contrast", str(tmp_path / "k.txt"), "--quiet",
    ])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "report:" in out and "non-zero" in out
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    for key in ("sparsity", "repeated_fact", "Gx", "Gy", "sigma_degrees", "concept_synapses", "findings", "skipped"):
        assert key in rep, key
    assert rep["sparsity"]["n_tokens"] == 512 and len(rep["Gx"]["blocks"]) == 4
    assert rep["concept_synapses"]["concept_sentences"] == 6 and rep["concept_synapses"]["sets"] == "user sentence files"
    assert "question_synapses" in rep or "questions" in rep["skipped"]
    page = (tmp_path / "r" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 6
    assert not re.search(r"(src|href)=[\"']?(https?:|//)", page)  # nothing fetched: works offline
    assert (tmp_path / "r" / "graph" / "G_x.graphml").is_file() and (tmp_path / "r" / "plots" / "sparsity.png").is_file()


def test_analyze_quick_sections(tmp_path):
    """A fast subset (sparsity, sigma): JSON numbers, the self-contained page, skipped sections recorded."""
    from bdh.analysis.report import analyze

    torch.manual_seed(0)
    m = BDH(tiny_config(n_layer=1, n_head=2, mlp_internal_dim_multiplier=2))
    rep = analyze(m, tmp_path / "r", corpus="pydoc", max_tokens=256, block=128, sections=("sparsity", "sigma"))
    assert rep["sparsity"]["n_tokens"] == 256 and "sigma" in rep["skipped"]  # one layer: no sigma
    assert "Gx" not in rep and any("non-zero" in f for f in rep["findings"])
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert saved["sparsity"]["xy"]["by_layer"] == pytest.approx(rep["sparsity"]["xy"]["by_layer"])
    page = (tmp_path / "r" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("data:image/png;base64,") == 1
    assert not re.search(r"(src|href)=[\"']?(https?:|//)", page)
    with pytest.raises(ValueError, match="sections"):
        analyze(m, tmp_path / "r", sections=("nope",))


def test_analyze_argument_errors(tmp_path):
    p = _parser()
    (tmp_path / "x.txt").write_text("a sentence.\n")
    args = p.parse_args(["analyze", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "r"), "--concept",
                         str(tmp_path / "x.txt")])
    with pytest.raises(ValueError, match="--concept needs --contrast"):
        args.func(args)
    args = p.parse_args(["analyze", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "r")])
    with pytest.raises(OSError):
        args.func(args)


def test_read_sentences_names_the_file_and_the_problem(tmp_path):
    """Issue 13, item 10: a missing, empty, blank, binary, non-UTF-8 file or a directory: one line with the label,
    the path and what is wrong (before: "does not exist" for a directory, a bare UnicodeDecodeError, NULs accepted)."""
    from bdh.analysis.concepts import read_sentences

    (tmp_path / "ok.txt").write_text(" one.\n\n two. \n")
    assert read_sentences(tmp_path / "ok.txt") == ["one.", "two."]
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_text("\n \n")
    (tmp_path / "nul.bin").write_bytes(b"ab\x00cd\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    for name, exc, what in (("missing.txt", FileNotFoundError, "no such file"), ("empty.txt", ValueError, "is empty"),
                            ("blank.txt", ValueError, "only blank lines"), ("nul.bin", ValueError, "binary file"),
                            ("latin1.txt", ValueError, "not UTF-8 text (byte 0xe9 at offset 3)"),
                            (".", IsADirectoryError, "is a directory")):
        with pytest.raises(exc) as e:
            read_sentences(tmp_path / name, label="--concept")
        msg = str(e.value)
        assert msg.startswith(f"--concept '{tmp_path / name}'") and what in msg and "\n" not in msg, msg
