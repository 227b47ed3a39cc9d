"""`bdh tasks sweep`, the reports: results.csv, summary.json, summary.md (per task a table variant x length
multiple, mean [95% bootstrap interval over examples and seeds]; the best variant per task at 4x; per grid option
the mean over the variants holding each value), acc_mult_TASK.png, curves_TASK.png (validation accuracy along
training per run) and a self-contained report.html."""

from __future__ import annotations

import csv
import html
import json
import statistics
from pathlib import Path

from ...io import atomic_path, atomic_write_text
from ..compare.planning import Run
from ..compare.reporting import LEARNED, _acc, _html_table, _md, inline_png, report_head, summarize, write_html
from .planning import HEADLINE_MULT, Variant, _key, split_top

# the variants' colours: matplotlib's cycle without its grey (C7, the GPT baselines'), then six more distinct ones
PALETTE = [f"C{i}" for i in range(10) if i != 7] + ["navy", "olive", "teal", "gold", "magenta", "maroon"]

FIELDS = ["task", "variant", "settings", "baseline", "model", "seed", "size", "mult", "passes", "accuracy",
          "token_accuracy",
          "loss", "tokens", "state_bytes", "params", "steps", "lr", "flops_per_token", "train_flops", "train_tokens",
          "train_time_s", "eval_examples"]


def sweep_summary(rows: list[dict]) -> list[dict]:
    """Per (task, variant, size): compare's `summarize` (mean, std, min, max over seeds; "ci": the 95% bootstrap
    interval over examples and seeds from the per-example outcomes) with "variant" and "baseline"."""
    base = {(r["task"], r["variant"]): r["baseline"] for r in rows}
    out = []
    for s in summarize([{**r, "model": r["variant"]} for r in rows]):
        v = s.pop("model")
        out.append({"task": s["task"], "variant": v, "baseline": base[(s["task"], v)], **s})
    return out


def _mean(s: dict | None):
    return None if s is None else s["accuracy"]["mean"]


def headline_mult(mults: list[float]) -> float:
    """HEADLINE_MULT (4) where evaluated, else the largest multiple below it, else the smallest."""
    below = [m for m in mults if m <= HEADLINE_MULT]
    return max(below) if below else min(mults)


def best_per_task(summary: list[dict], task: str, order: list[str]) -> dict:
    """The best BDH variant of `task` at the headline multiple (highest mean; ties: the higher mean at 1x, then the
    earlier variant), the base variant and the best baseline there, and whether any arm learned the task at 1x
    (mean >= LEARNED)."""
    at = {(s["variant"], s["mult"]): s for s in summary if s["task"] == task}
    mults = sorted({m for _, m in at})
    hm = headline_mult(mults)
    variants = [v for v in order if (v, hm) in at]

    def key(v):
        return (-(_mean(at[(v, hm)]) or 0.0), -(_mean(at.get((v, 1))) or 0.0), order.index(v))

    bdh = [v for v in variants if not at[(v, hm)]["baseline"]]
    gpt = [v for v in variants if at[(v, hm)]["baseline"]]
    best = min(bdh, key=key) if bdh else None
    bb = min(gpt, key=key) if gpt else None
    learned = any((_mean(at.get((v, 1))) or 0.0) >= LEARNED for v in order)
    pick = lambda v: None if v is None else {"variant": v, "accuracy": _mean(at[(v, hm)]),  # noqa: E731
                                             "ci": at[(v, hm)]["ci"], "at_1x": _mean(at.get((v, 1)))}
    return {"mult": hm, "best": pick(best), "base": pick("base" if ("base", hm) in at else None),
            "best_baseline": pick(bb), "learned": learned, "threshold": LEARNED}


def main_effects(summary: list[dict], task: str, variants: list[Variant], grids: list[str], mult: float) -> list[dict]:
    """With two or more --grid options: per option and value, the mean accuracy (at 1x and at `mult`) over the
    grid's variants holding that value (each variant's mean over seeds), and how many variants that is."""
    parsed = []
    for g in grids:
        section, key, values = _key(g, "--grid", g)
        parsed.append((f"{section}.{key}", split_top(values, ",")))
    if len(parsed) < 2:
        return []
    keys = tuple(k for k, _ in parsed)
    at = {(s["variant"], s["mult"]): _mean(s) for s in summary if s["task"] == task}
    grid_vs = [v for v in variants if tuple(s.split("=", 1)[0] for s in v.settings) == keys]
    out = []
    for k, values in parsed:
        for val in values:
            holding = [v for v in grid_vs if f"{k}={val}" in v.settings]
            row = {"option": k, "value": val, "variants": len(holding)}
            for m, name in ((1, "at_1x"), (mult, "at_mult")):
                xs = [at.get((v.name, m)) for v in holding]
                xs = [x for x in xs if x is not None]
                row[name] = statistics.fmean(xs) if xs else None
            out.append(row)
    return out


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _ci(p: dict | None) -> str:
    if not p:
        return "–"
    return f"{p['accuracy']:.3f}" + (f" [{p['ci'][0]:.3f}, {p['ci'][1]:.3f}]" if p.get("ci") else "")


def task_table(summary: list[dict], task: str, order: list[str], settings: dict[str, str],
               params: dict[str, int]) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per variant (then the baselines), one column per length multiple: mean [95% CI]."""
    at = {(s["variant"], s["mult"]): s for s in summary if s["task"] == task}
    mults = sorted({m for _, m in at})
    head = ["variant", "settings", "params"] + [f"{m:g}x" for m in mults]
    body = []
    for v in order:
        if not any((v, m) in at for m in mults):
            continue
        body.append([v, settings.get(v, ""), f"{params.get(v, 0):,}"]
                    + [_acc(at[(v, m)]) if (v, m) in at else "–" for m in mults])
    return head, body


def plot_task(summary: list[dict], task: str, order: list[str], out: Path) -> Path:
    """acc_mult_TASK.png: exact match vs length multiple (log2), one line per variant (the band: the 95% bootstrap
    interval), the GPT baselines dashed."""
    from ...analysis.plotting import plt_figure, save

    n = sum(1 for v in order if any(s["variant"] == v and s["task"] == task for s in summary))
    fig, (ax,) = plt_figure(width=8 + (2 if n > 8 else 0), height=4.5)
    colours = 0
    for v in order:
        pts = sorted((s["mult"], s) for s in summary if s["task"] == task and s["variant"] == v
                     and s["accuracy"]["mean"] is not None)
        if not pts:
            continue
        x = [p[0] for p in pts]
        y = [p[1]["accuracy"]["mean"] for p in pts]
        if pts[0][1]["baseline"]:
            style = dict(ls="--", marker="s", lw=1.5)
            col = {"gpt-alibi-flops": "0.25", "gpt-rope-flops": "0.55"}.get(v, "0.4")  # greys
        else:
            style, col = dict(ls="-", marker="o", lw=1.8), PALETTE[colours % len(PALETTE)]
            colours += 1
        ax.plot(x, y, color=col, label=v, **style)
        if all(p[1].get("ci") for p in pts):
            ax.fill_between(x, [p[1]["ci"][0] for p in pts], [p[1]["ci"][1] for p in pts], color=col, alpha=0.12)
    mults = sorted({s["mult"] for s in summary if s["task"] == task})
    ax.set_xscale("log", base=2)
    ax.set_xticks(mults)
    ax.set_xticklabels([f"{m:g}x" for m in mults])
    ax.set(xlabel="length multiple of the training size (log2)", ylabel="exact-match accuracy", ylim=(-0.02, 1.02),
           title=f"{task}: accuracy vs length (band: 95% CI over examples and seeds; dashed: GPT baselines)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save(fig, out / f"acc_mult_{task}.png")


def lr_table(lr_choice: dict, variants: list[Variant]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a learning-rate sweep: per task and arm (variant or baseline), the value chosen and the
    mean final validation accuracy at each value swept; ([], []) when no arm swept more than one."""
    swept = {k: c for k, c in lr_choice.items() if len(c["val"]) > 1}
    if not swept:
        return [], []
    lrs = sorted({lr for c in swept.values() for lr in c["val"]})
    name = {v.dir: v.name for v in variants if not v.scaled}
    head = ["task", "variant", "chosen lr"] + [f"val acc at {lr:g}" for lr in lrs]
    body = [[t, name.get(vdir, m) if vdir else m, f"{c['lr']:g}"] + [_f(c["val"].get(lr)) for lr in lrs]
            for (t, m, vdir), c in swept.items()]
    return head, body


def plot_curves(runs: list[Run], curves: dict[str, dict], task: str, variants: list[Variant], out: Path) -> Path | None:
    """curves_TASK.png: validation exact match along training (against training FLOPs) for every run of `task`,
    one colour per variant and one line per seed (the GPT baselines dashed, in greys): whether each arm converged."""
    from ...analysis.plotting import plt_figure, save

    name = {v.dir: v.name for v in variants if not v.scaled}
    arms = list(dict.fromkeys((r.variant, r.model) for r in runs if r.task_name == task))
    if not any(curves.get(r.key, {}).get("val") for r in runs if r.task_name == task):
        return None
    fig, (ax,) = plt_figure(width=8 + (2 if len(arms) > 8 else 0), height=4.5)
    colours = 0
    for vdir, model in arms:
        if vdir:
            style, col = dict(ls="-", marker="o", lw=1.2, ms=3), PALETTE[colours % len(PALETTE)]
            colours += 1
        else:
            style, col = dict(ls="--", marker="s", lw=1.2, ms=3), {"gpt-alibi-flops": "0.25"}.get(model, "0.55")
        label = name.get(vdir, model) if vdir else model
        for r in (r for r in runs if r.task_name == task and (r.variant, r.model) == (vdir, model)):
            v = [x for x in curves.get(r.key, {}).get("val", []) if x.get("flops") is not None]
            if v:
                ax.plot([x["flops"] for x in v], [x["accuracy"] for x in v], color=col, label=label, alpha=0.8,
                        **style)
                label = None  # one legend entry per arm
    ax.set_xscale("log")
    ax.axhline(LEARNED, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="training FLOPs (log)", ylabel="validation exact match", ylim=(-0.02, 1.02),
           title=f"{task}: validation accuracy along training (one line per seed; dashed: GPT baselines)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save(fig, out / f"curves_{task}.png")


def write_reports(rows: list[dict], runs: list[Run], variants: list[Variant], out: Path, *, preset_name: str,
                  preset: dict, sets: tuple[str, ...], grids: list[str], wall_s: float, command: str,
                  lr_choice: dict | None = None, curves: dict[str, dict] | None = None) -> None:
    """results.csv, summary.json, summary.md, acc_mult_TASK.png, curves_TASK.png and report.html in `out`.
    `variants`: the report labels in order (`scaled_labels`); `lr_choice`: `execute_tuned`'s choice, (task, arm,
    variant dir) -> ...; `curves`: run key -> `read_curve` (the validation accuracy along training)."""
    from ...analysis.plotting import jsonable

    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "results.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows({k: r.get(k) for k in FIELDS} for r in rows)
    summary = sweep_summary(rows)
    tasks = list(dict.fromkeys(r.task_name for r in runs))
    order = [v.name for v in variants] + list(dict.fromkeys(r.model for r in runs if not r.variant))
    settings = {v.name: "; ".join(v.settings) or "–" for v in variants}
    settings.update({r.model: "FLOP-matched to base" for r in runs if not r.variant})
    params = {t: {v.name: r.params for r in runs if r.task_name == t for v in variants if v.dir == r.variant}
                 | {r.model: r.params for r in runs if r.task_name == t and not r.variant} for t in tasks}
    best = {t: best_per_task(summary, t, order) for t in tasks}
    effects = {t: main_effects(summary, t, variants, grids, best[t]["mult"]) for t in tasks}
    n_seeds = len({r.seed for r in runs})
    atomic_write_text(out / "summary.json", json.dumps(jsonable({
        "preset": preset_name, "command": command, "tasks": tasks, "seeds": n_seeds, "set": list(sets),
        "grid": grids, "settings": {k: v for k, v in preset.items() if k != "tasks"},
        "variants": [{"name": v.name, "dir": v.dir, "settings": list(v.settings)} for v in variants],
        "baselines": list(dict.fromkeys(r.model for r in runs if not r.variant)), "params": params,
        "summary": summary, "best": best, "main_effects": effects, "wall_s": wall_s,
        "lr_choice": {"/".join(x for x in k if x): c for k, c in (lr_choice or {}).items()}}), indent=2))
    steps = sorted({r.steps for r in runs if r.variant})
    shape = ", ".join(f"{k}={v}" for k, v in preset["bdh"].items())
    intro = (f"Preset `{preset_name}`: the base BDH ({shape})" + (f", --set {' '.join(sets)}" if sets else "")
             + f"; {n_seeds} seed(s) per variant, {', '.join(map(str, steps))} steps (the variant's own settings "
             f"where it sets train.*). Each variant: the base BDH with its settings (`section.key=value`, applied "
             f"after the preset and --set; named by those that differ from the base). Baselines (dashed in the "
             f"plots): compare's GPTs at the base BDH's parameters, trained for the steps that equal its training "
             f"FLOPs. Accuracy: exact match on {preset['n_examples']} fresh examples per size (test seed 1234), "
             f"mean over seeds [95% bootstrap interval: seeds resampled, then examples within each seed]. "
             f"Wall time of this invocation {wall_s / 60:.1f} min (finished runs are reused).")
    md, body_html = report_head(f"BDH sweep ({preset_name} preset)", command, intro)
    bhead = ["task", "at", "best variant", "accuracy [95% CI]", "its 1x", "base", "best baseline",
             f"learned (some arm >= {LEARNED} at 1x)"]
    bbody = [[t, f"{b['mult']:g}x", b["best"]["variant"] if b["best"] else "–", _ci(b["best"]),
              _f(b["best"]["at_1x"]) if b["best"] else "–", _ci(b["base"]),
              (f"{b['best_baseline']['variant']} {_ci(b['best_baseline'])}" if b["best_baseline"] else "–"),
              "yes" if b["learned"] else "no: not learned at this budget"] for t, b in best.items()]
    md += [f"## Best variant per task at {HEADLINE_MULT}x", "", _md(bhead, bbody), ""]
    body_html += [f"<h2>Best variant per task at {HEADLINE_MULT}x</h2>", _html_table(bhead, bbody)]
    lhead, lbody = lr_table(lr_choice or {}, variants)
    if lbody:
        text = ("Learning rates: each arm's values swept on its tuning seed(s), the one with the highest mean final "
                "validation accuracy (validation examples, not the test ones) used for every seed:")
        md += ["## Learning rates", "", text, "", _md(lhead, lbody), ""]
        body_html += ["<h2>Learning rates</h2>", f"<p>{html.escape(text)}</p>", _html_table(lhead, lbody)]
    for task in tasks:
        head, body = task_table(summary, task, order, settings, params[task])
        text = "Exact match per length multiple of the training size, mean [95% CI]:"
        md += [f"## {task}", "", text, "", _md(head, body), ""]
        body_html += [f"<h2>{html.escape(task)}</h2>", f"<p>{html.escape(text)}</p>", _html_table(head, body)]
        if effects[task]:
            m = best[task]["mult"]
            ehead = ["option", "value", "variants", "mean at 1x", f"mean at {m:g}x"]
            ebody = [[e["option"], e["value"], str(e["variants"]), _f(e["at_1x"]), _f(e["at_mult"])]
                     for e in effects[task]]
            etext = "Per grid option and value: the mean over the grid's variants holding it (each a mean over seeds):"
            md += [etext, "", _md(ehead, ebody), ""]
            body_html += [f"<p>{html.escape(etext)}</p>", _html_table(ehead, ebody)]
        png = plot_task(summary, task, order, out)
        md += [f"![{png.stem}]({png.name})", ""]
        body_html.append(inline_png(png))
        cpng = plot_curves(runs, curves or {}, task, variants, out)
        if cpng:
            md += [f"![{cpng.stem}]({cpng.name})", ""]
            body_html.append(inline_png(cpng))
    atomic_write_text(out / "summary.md", "\n".join(md))
    write_html(out / "report.html", "bdh tasks sweep", body_html)
