"""`bdh graph` (kl, run, info) and the edge-list / GraphML export."""

import csv
import importlib.util
import json
import xml.etree.ElementTree as ET

import pytest
import torch

from bdh import BDH
from bdh.graph import random_bdh_graph
from bdh.graph.cli import main
from bdh.graph.export import export_graph
from bdh.graph.kl import default_budgets
from conftest import tiny_config, train_briefly

GML = "{http://graphml.graphdrawing.org/xmlns}"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, one_thread):
    torch.manual_seed(0)
    model = train_briefly(BDH(tiny_config(n_layer=1, mlp_internal_dim_multiplier=4)), steps=10)  # n = 128
    d = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(d)
    return d


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_export_table1_graph_csv_and_graphml(tmp_path):
    model = random_bdh_graph(12, 40, n_layer=2, seed=0, scale=1.0)
    _, state = model.run(torch.rand(1, 3, 12, dtype=torch.float64))
    export_graph(tmp_path, model.graphs, state, sigma_top=None, fmt="both")
    for name in ("Gx_e", "Gx_i", "Gy_e", "Gy_i", "Gs"):
        rows = _read_csv(tmp_path / f"{name}.csv")
        g = model.graphs[name]
        assert len(rows) == g.num_edges
        assert [(int(r["src"]), int(r["dst"])) for r in rows] == list(zip(g.src.tolist(), g.dst.tolist()))
        assert max(abs(float(r["weight"]) - w) for r, w in zip(rows, g.weight.tolist())) < 1e-8
    sig = _read_csv(tmp_path / "sigma_0.csv")
    assert [float(r["sigma"]) for r in sig] == pytest.approx(state.edges["sigma_0"][0].tolist(), rel=1e-8, abs=1e-12)
    root = ET.parse(tmp_path / "graph.graphml").getroot()
    g = root.find(f"{GML}graph")
    assert len(g.findall(f"{GML}node")) == 12
    total = sum(x.num_edges for x in model.graphs.values()) + 2 * model.graphs["Gs"].num_edges  # + sigma_0, sigma_1
    assert len(g.findall(f"{GML}edge")) == total
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["n"] == 12 and meta["t"] == 3 and meta["edges"]["Gs"] == model.graphs["Gs"].num_edges
    with pytest.raises(ValueError, match="format='xml'"):
        export_graph(tmp_path, model.graphs, fmt="xml")


def test_cli_kl_prints_every_budget_and_plots(ckpt, tmp_path, capsys):
    js, png = tmp_path / "kl.json", tmp_path / "kl.png"
    plot = importlib.util.find_spec("matplotlib") is not None  # the figure needs matplotlib (optional)
    rc = main(["graph", "kl", "--model", str(ckpt), "--corpus", "pydoc", "--batch", "2", "--seq-len", "12",
               "--budgets", "200", "16384", "--json", str(js), "--gains", "exact", "meanfield",
               *(["--plot", str(png)] if plot else [])])
    assert rc == 0
    out = capsys.readouterr().out
    assert "exact hubs" in out and "KL mean" in out and "meanfield" in out
    res = json.loads(js.read_text())
    rows = res["rows"]
    assert [(r["budget_per_graph"], r["gains"]) for r in rows] == [
        (None, "exact"), (200, "exact"), (16384, "exact"),
        (None, "meanfield"), (200, "meanfield"), (16384, "meanfield")]
    assert rows[0]["kl_mean"] < 1e-8 and rows[2]["kl_mean"] < 1e-8  # exact hubs; all n^2 = 16384 entries
    assert rows[1]["kl_mean"] > 1e-4
    assert 1e-8 < rows[3]["kl_mean"] < 1.0
    if plot:
        assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert default_budgets(128, 3) == [128, 1448, 16384]


def test_cli_run_exports_graphs_and_sigma_snapshots(ckpt, tmp_path, capsys):
    out = tmp_path / "exp"
    rc = main(["graph", "run", "--model", str(ckpt), "--prompt", "The cat", "--budget", "500",
               "--max-new-tokens", "5", "--export", str(out), "--format", "both", "--snapshot-every", "3",
               "--sigma-top", "50"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "graph form (greedy)" in text and "agreement:" in text
    assert len(_read_csv(out / "sigma_0.csv")) == 50
    assert len(_read_csv(out / "Gx_e.csv")) + len(_read_csv(out / "Gx_i.csv")) == 500
    assert (out / "sigma_t3" / "sigma_0.csv").exists() and (out / "sigma_t6" / "sigma_0.csv").exists()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokens"] == 7 and meta["budget"] == 500 and len(meta["sigma_snapshots"]) == 2
    ET.parse(out / "graph.graphml")  # well-formed


def test_cli_run_exact_hubs_matches_bdh_gpu_greedy(ckpt, capsys):
    assert main(["graph", "run", "--model", str(ckpt), "--prompt", "Hello", "--max-new-tokens", "6"]) == 0
    assert "agreement: 6/6 tokens" in capsys.readouterr().out
    assert main(["graph", "info", "--model", str(ckpt), "--budget", "100"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n"] == 128 and info["edges"]["parameter graphs (G_x, G_y)"] == 200


@pytest.mark.parametrize("argv,msg", [
    (["run", "--prompt", ""], "--prompt is empty"),
    (["run", "--prompt", "x", "--format", "xml"], "--format='xml'"),
    (["kl", "--text", "/nonexistent/file.txt"], ""),
])
def test_cli_errors_are_one_line(ckpt, capsys, argv, msg):
    rc = main(["graph", argv[0], "--model", str(ckpt), *argv[1:]])
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("bdh graph: error:") and msg in err and "\n" not in err


@pytest.mark.parametrize("argv,msg", [  # counts checked where they enter (argparse), before the model is loaded
    (["run", "--prompt", "x", "--budget", "-5"], "argument --budget: -5: expected an integer >= 0"),
    (["run", "--prompt", "x", "--max-new-tokens", "-1"], "argument --max-new-tokens: -1: expected an integer >= 0"),
    (["run", "--prompt", "x", "--sigma-top", "-1"], "argument --sigma-top: -1"),
    (["run", "--prompt", "x", "--snapshot-every", "-2"], "argument --snapshot-every: -2"),
    (["run", "--prompt", "x", "--synapses", "0"], "argument --synapses: 0: expected an integer >= 1"),
    (["kl", "--batch", "0"], "argument --batch: 0: expected an integer >= 1"),
    (["kl", "--seq-len", "-3"], "argument --seq-len: -3"),
    (["kl", "--points", "0"], "argument --points: 0"),
    (["kl", "--budgets", "10", "-1"], "argument --budgets: -1"),
    (["info", "--budget", "x"], "argument --budget: 'x': expected an integer >= 0"),
])
def test_cli_bad_counts_are_argparse_errors(tmp_path, capsys, argv, msg):
    with pytest.raises(SystemExit) as e:  # no model needed: refused before anything is loaded
        main(["graph", argv[0], "--model", str(tmp_path / "none"), *argv[1:]])
    assert e.value.code == 2
    assert msg in capsys.readouterr().err.strip().splitlines()[-1]
