"""`bdh eval` on a translation-trained model reproduces the run's own final evaluation (seed-free validation)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bdh.cli import main

NOUNS = [("cat", "chat"), ("house", "maison"), ("tree", "arbre"), ("river", "rivière"), ("book", "livre")]
ADJS = [("big", "grand"), ("small", "petit"), ("old", "vieux"), ("green", "vert")]


@pytest.mark.parametrize("source", ["parallel", "gettext"])
def test_eval_reproduces_the_final_evaluation_of_a_translation_run(tmp_path, source):
    """`bdh eval --model RUN` (no other option) gives the run's final validation loss: same tokens, same value."""
    if source == "gettext":
        from bdh.data.translation import gettext_languages

        if "fr" not in gettext_languages():
            pytest.skip("no French gettext catalogs on this machine")
    en, fr = [], []
    for i in range(300):
        (n_en, n_fr), (a_en, a_fr) = NOUNS[i % 5], ADJS[(i // 5) % 4]
        en.append(f"The {n_en} number {i} is {a_en}.\n")
        fr.append(f"Le {n_fr} numéro {i} est {a_fr}.\n")
    (tmp_path / "ep.en").write_text("".join(en), encoding="utf-8")
    (tmp_path / "ep.fr").write_text("".join(fr), encoding="utf-8")
    spec = f"parallel:{tmp_path / 'ep'}:en-fr" if source == "parallel" else "gettext:fr"
    out = tmp_path / "run"
    # the tiny config's own evaluation settings (eval_batch_size, final_eval_tokens): bdh eval reads them from the run
    sets = ["train.steps=4", "train.eval_every=0", "train.checkpoint_every=0", "train.sample_tokens=0",
            "train.threads=1", "train.data_seed=4242"]
    argv = ["train", "--config", "tiny", "--out", str(out), "--no-progress", "--data", spec]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in recs if r.get("split") == "final"][-1]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "bdh.cli", "eval", "--model", str(out), "--json"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout.strip().splitlines()[-1])
    assert (ev["tokens"], ev["bytes"]) == (final["tokens"], final["bytes"])
    assert ev["loss"] == pytest.approx(final["loss"], rel=1e-6, abs=1e-7)
