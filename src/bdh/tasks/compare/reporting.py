"""`bdh tasks compare`, the reports: results.csv, summary.json, summary.md (mean +- std and min-max over seeds),
the plots and report.html."""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import statistics
from pathlib import Path

from ...io import atomic_path, atomic_write_text
from .planning import MODELS, Run, train_settings

FIELDS = ["task", "model", "seed", "size", "mult", "passes", "trained_passes", "accuracy", "token_accuracy", "loss",
          "tokens",
          "state_bytes", "params", "train_tokens", "train_time_s", "eval_examples"]

# ----------------------------------------------------------------------------------------------- reports
def _stats(xs: list[float]) -> dict:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "min": min(xs),
            "max": max(xs), "n": len(xs)}


def summarize(rows: list[dict]) -> list[dict]:
    """Mean, std, min and max over seeds per (task, model, size, passes)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["model"], r["size"], r["passes"]), []).append(r)
    out = []
    for (task, model, size, passes), rs in groups.items():
        out.append({"task": task, "model": model, "size": size, "mult": rs[0]["mult"], "passes": passes,
                    "trained_passes": rs[0]["trained_passes"], "params": rs[0]["params"],
                    "seeds": sorted(r["seed"] for r in rs), "accuracy": _stats([r["accuracy"] for r in rs]),
                    "token_accuracy": _stats([r.get("token_accuracy") for r in rs]),
                    "loss": _stats([r["loss"] for r in rs]), "tokens": rs[0]["tokens"],
                    "state_bytes": rs[0]["state_bytes"]})
    return out


def _acc(s: dict) -> str:
    a = s["accuracy"]
    if a["mean"] is None:
        return "n/a"
    return f"{a['mean']:.3f} ± {a['std']:.3f} [{a['min']:.3f}–{a['max']:.3f}]"


def _tok(s: dict) -> str:
    a = s.get("token_accuracy") or {}
    return "n/a" if a.get("mean") is None else f"{a['mean']:.3f}"


def _bytes(b) -> str:
    if b is None:
        return "n/a"
    for unit, k in (("MiB", 2**20), ("KiB", 2**10)):
        if b >= k:
            return f"{b / k:,.1f} {unit}"
    return f"{b:,} B"


def task_tables(summary: list[dict], task: str) -> tuple[list[str], list[list[str]], list[str], list[list[str]]]:
    """(header, rows) of the size table and of BDH's passes table for `task`."""
    at_trained = [s for s in summary if s["task"] == task and s["passes"] == s["trained_passes"]]
    models = [m for m in MODELS if any(s["model"] == m for s in at_trained)]
    by = {(s["model"], s["size"]): s for s in at_trained}
    sizes = sorted({s["size"] for s in at_trained})
    head = (["size", "x train", "tokens"] + [f"{m} accuracy" for m in models] + [f"{m} tok-acc" for m in models]
            + [f"{m} state" for m in models])
    body = []
    for size in sizes:
        any_s = next(by[(m, size)] for m in models if (m, size) in by)
        body.append([str(size), f"{any_s['mult']:g}", str(any_s["tokens"])]
                    + [_acc(by[(m, size)]) if (m, size) in by else "–" for m in models]
                    + [_tok(by[(m, size)]) if (m, size) in by else "–" for m in models]
                    + [_bytes(by[(m, size)]["state_bytes"]) if (m, size) in by else "–" for m in models])
    bdh = [s for s in summary if s["task"] == task and s["model"] == MODELS[0]]  # the studied arm (its pass sweep)
    psizes = sorted({s["size"] for s in bdh if s["passes"] != s["trained_passes"]})
    passes = sorted({s["passes"] for s in bdh if s["size"] in psizes})
    pby = {(s["passes"], s["size"]): s for s in bdh}
    phead = ["BDH passes"] + [f"size {s}" for s in psizes]
    pbody = [[f"{p}" + (" (trained)" if bdh and p == bdh[0]["trained_passes"] else "")]
             + [_acc(pby[(p, s)]) if (p, s) in pby else "–" for s in psizes] for p in passes] if psizes else []
    return head, body, phead, pbody


def _md(head: list[str], body: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in body])


def _html_table(head: list[str], body: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    b = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>"


def plot_task(summary: list[dict], task: str, out: Path) -> list[Path]:
    """acc_size_TASK.png (accuracy with the seed min-max band, and state bytes, vs size) and passes_TASK.png."""
    from ...analysis.plotting import plt_figure, save

    styles = {"bdh": ("o-", "C0"), "gpt-alibi": ("s--", "C1"), "gpt-rope": ("^:", "C2")}
    files = []
    fig, (ax, ax2) = plt_figure(1, 2, width=11, height=4)
    for m, (st, col) in styles.items():
        pts = sorted((s["size"], s) for s in summary if s["task"] == task and s["model"] == m
                     and s["passes"] == s["trained_passes"] and s["accuracy"]["mean"] is not None)
        if not pts:
            continue
        x = [p[0] for p in pts]
        a = [p[1]["accuracy"] for p in pts]
        ax.plot(x, [v["mean"] for v in a], st, color=col, label=f"{m} ({pts[0][1]['params']:,} params)")
        ax.fill_between(x, [v["min"] for v in a], [v["max"] for v in a], color=col, alpha=0.2)
        ax2.plot(x, [p[1]["state_bytes"] for p in pts], st, color=col, label=m)
    train = next((s["size"] / s["mult"] for s in summary if s["task"] == task), None)
    if train:
        ax.axvline(train, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="size (log2; dashed: training size)", ylabel="exact-match accuracy", ylim=(-0.02, 1.02),
           title=f"{task}: accuracy vs size (band: seed min–max)")
    ax.legend(fontsize=8)
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set(xlabel="size (log2)", ylabel="inference state bytes per sequence", title="BDH state vs GPT KV cache")
    ax2.legend(fontsize=8)
    files.append(save(fig, out / f"acc_size_{task}.png"))
    bdh = [s for s in summary if s["task"] == task and s["model"] == MODELS[0]]  # the studied arm (its pass sweep)
    psizes = sorted({s["size"] for s in bdh if s["passes"] != s["trained_passes"]})
    if psizes:
        fig, (ax,) = plt_figure()
        for i, size in enumerate(psizes):
            pts = sorted((s["passes"], s["accuracy"]) for s in bdh if s["size"] == size and s["accuracy"]["mean"] is not None)
            x = [p[0] for p in pts]
            ax.plot(x, [p[1]["mean"] for p in pts], "o-", color=f"C{i}", label=f"size {size}")
            ax.fill_between(x, [p[1]["min"] for p in pts], [p[1]["max"] for p in pts], color=f"C{i}", alpha=0.2)
        ax.axvline(bdh[0]["trained_passes"], color="grey", lw=0.8, ls="--")
        ax.set(xlabel="layer passes at test time (dashed: trained)", ylabel="exact-match accuracy",
               ylim=(-0.02, 1.02), title=f"{task}: BDH depth as test-time compute")
        ax.legend(fontsize=8)
        files.append(save(fig, out / f"passes_{task}.png"))
    return files


def write_reports(rows: list[dict], runs: list[Run], out: Path, *, preset_name: str, preset: dict, wall_s: float,
                  command: str) -> None:
    from ...analysis.plotting import jsonable

    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "results.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows({k: r.get(k) for k in FIELDS} for r in rows)
    summary = summarize(rows)
    tasks = list(dict.fromkeys(r.task_name for r in runs))
    params = {t: {r.model: r.params for r in runs if r.task_name == t} for t in tasks}
    settings = {k: v for k, v in preset.items() if k != "tasks"}
    n_seeds = len({r.seed for r in runs})
    atomic_write_text(out / "summary.json", json.dumps(jsonable({
        "preset": preset_name, "command": command, "tasks": tasks, "seeds": n_seeds, "settings": settings,
        "params": params, "summary": summary, "wall_s": wall_s}), indent=2))
    steps = {t: train_settings(preset, t)["steps"] for t in tasks}
    steps_txt = (f"{next(iter(steps.values()))} steps" if len(set(steps.values())) == 1
                 else "steps " + ", ".join(f"{t} {v}" for t, v in steps.items()))
    intro = (f"Preset `{preset_name}`: {n_seeds} seeds per model, {steps_txt}, batch {preset['train']['batch_size']} "
             f"(the same examples in the same order for every model of a seed), sizes <= the training size. "
             f"Accuracy: exact match on {preset['n_examples']} fresh examples per size, mean ± std [min–max] over "
             f"seeds; tok-acc: the fraction of answer tokens right (partial credit), mean over seeds. "
             f"State: BDH's ρ (constant) vs the GPT's KV cache at the sequence's length. "
             f"Wall time of this invocation {wall_s / 60:.1f} min (finished runs are reused).")
    md = [f"# BDH vs GPT on reasoning tasks ({preset_name} preset)", "", f"`{command}`", "", intro, ""]
    body_html = [f"<h1>BDH vs GPT on reasoning tasks ({html.escape(preset_name)} preset)</h1>",
                 f"<p><code>{html.escape(command)}</code></p>", f"<p>{html.escape(intro)}</p>"]
    for task in tasks:
        head, body, phead, pbody = task_tables(summary, task)
        pp = ", ".join(f"{m} {p:,}" for m, p in params[task].items())
        md += [f"## {task}", "", f"Parameters: {pp}.", "", _md(head, body), ""]
        body_html += [f"<h2>{html.escape(task)}</h2>", f"<p>Parameters: {html.escape(pp)}.</p>", _html_table(head, body)]
        if pbody:
            md += ["BDH at other numbers of layer passes (weights shared across layers):", "", _md(phead, pbody), ""]
            body_html += ["<p>BDH at other numbers of layer passes (weights shared across layers):</p>",
                          _html_table(phead, pbody)]
        for png in plot_task(summary, task, out):
            md += [f"![{png.stem}]({png.name})", ""]
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            body_html.append(f'<p><img alt="{html.escape(png.stem)}" src="data:image/png;base64,{data}"></p>')
    atomic_write_text(out / "summary.md", "\n".join(md))
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right}th{background:#f4f4f4}img{max-width:100%}")
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>bdh tasks compare</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body_html) + "\n</body></html>\n")
    atomic_write_text(out / "report.html", page)


