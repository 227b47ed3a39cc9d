"""`bdh tasks compare`, the reports: results.csv, summary.json, summary.md (mean over seeds with a 95% bootstrap
interval over examples and seeds), compute (parameters, FLOPs, tokens, wall-clock, steps to 0.95), the "learned"
rule, the plots (accuracy vs size; accuracy vs training FLOPs and wall-clock along each run) and report.html."""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import statistics
from pathlib import Path

from ...io import atomic_path, atomic_write_text
from .planning import MODELS, Run, arms, train_settings

FIELDS = ["task", "model", "seed", "size", "mult", "passes", "trained_passes", "accuracy", "token_accuracy", "loss",
          "tokens",
          "state_bytes", "params", "train_tokens", "train_time_s", "eval_examples", "steps", "lr", "flops_per_token",
          "train_flops", "selected"]
ARM_ORDER = arms(("params", "flops"))
LEARNED = 0.95  # a task is learned where some arm reaches this exact match at the training size (spec 6d)


def _order(names) -> list[str]:
    names = list(dict.fromkeys(names))
    return sorted(names, key=lambda m: (ARM_ORDER.index(m) if m in ARM_ORDER else len(ARM_ORDER), names.index(m)))

# ----------------------------------------------------------------------------------------------- reports
def _stats(xs: list[float]) -> dict:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "min": min(xs),
            "max": max(xs), "n": len(xs)}


def summarize(rows: list[dict]) -> list[dict]:
    """Mean, std, min and max over seeds per (task, model, size, passes) of the selected rows (the learning rate
    chosen on the validation set), and "ci": the 95% bootstrap interval [lo, hi] of the accuracy over examples and
    seeds (`bdh.tasks.evaluate.bootstrap_interval`) where the rows hold their per-example outcomes ("correct")."""
    from ..evaluate import bootstrap_interval

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("selected", True) in (True, "True", None):
            groups.setdefault((r["task"], r["model"], r["size"], r["passes"]), []).append(r)
    out = []
    for (task, model, size, passes), rs in groups.items():
        ci = None
        if rs and all(r.get("correct") for r in rs):
            _, lo, hi = bootstrap_interval([[int(c) for c in r["correct"]] for r in rs])
            ci = [lo, hi]
        out.append({"task": task, "model": model, "size": size, "mult": rs[0]["mult"], "passes": passes,
                    "trained_passes": rs[0]["trained_passes"], "params": rs[0]["params"], "lr": rs[0].get("lr"),
                    "steps": rs[0].get("steps"), "ci": ci,
                    "seeds": sorted(r["seed"] for r in rs), "accuracy": _stats([r["accuracy"] for r in rs]),
                    "token_accuracy": _stats([r.get("token_accuracy") for r in rs]),
                    "loss": _stats([r["loss"] for r in rs]), "tokens": rs[0]["tokens"],
                    "state_bytes": rs[0]["state_bytes"]})
    return out


def _acc(s: dict) -> str:
    """mean [lo, hi]: the 95% bootstrap interval over examples and seeds (mean ± std [min–max] without it)."""
    a = s["accuracy"]
    if a["mean"] is None:
        return "n/a"
    if s.get("ci"):
        return f"{a['mean']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]"
    return f"{a['mean']:.3f} ± {a['std']:.3f} [{a['min']:.3f}–{a['max']:.3f}]"


def learned(summary: list[dict], task: str) -> tuple[bool, str | None, float | None]:
    """(learned, best arm, its mean exact match) at the training size and trained passes: learned where some arm
    reaches `LEARNED` (0.95); otherwise the task is "not learned at this budget" and its table has no numbers."""
    at = [s for s in summary if s["task"] == task and s["passes"] == s["trained_passes"] and s["mult"] == 1
          and s["accuracy"]["mean"] is not None]
    if not at:
        return False, None, None
    best = max(at, key=lambda s: s["accuracy"]["mean"])
    return best["accuracy"]["mean"] >= LEARNED, best["model"], best["accuracy"]["mean"]


def steps_to(curve: dict, threshold: float = LEARNED) -> dict | None:
    """The first evaluation along a run (metrics.jsonl's validation records) at >= `threshold` exact match:
    {"step", "flops", "tokens", "elapsed_s"}; None where never reached."""
    for v in (curve or {}).get("val", []):
        if v.get("accuracy") is not None and v["accuracy"] >= threshold:
            return {k: v.get(k) for k in ("step", "flops", "tokens", "elapsed_s")}
    return None


def _median(xs):
    xs = sorted(x for x in xs if x is not None)
    return None if not xs else statistics.median(xs)


def _g(x, fmt="{:.3g}") -> str:
    return "n/a" if x is None else fmt.format(x)


def compute_rows(rows: list[dict], runs: list[Run], curves: dict[str, dict], lr_choice: dict, task: str) -> list[dict]:
    """Per arm of `task` (its chosen learning rate): parameters, steps, learning rate, FLOPs per token, training
    FLOPs, tokens and wall-clock (means over seeds, recorded), and steps / FLOPs / wall-clock to 0.95 exact match on
    the validation set (medians over the seeds that reach it, with their count)."""
    out = []
    for arm in _order(r.model for r in runs if r.task_name == task):
        choice = (lr_choice or {}).get((task, arm), {})
        rs = [r for r in runs if r.task_name == task and r.model == arm and r.lr == choice.get("lr", r.lr)]
        if not rs:
            continue
        got = {}
        for row in rows:
            if row["task"] == task and row["model"] == arm and row.get("lr", rs[0].lr) == rs[0].lr:
                got.setdefault(row["seed"], row)
        reach = [steps_to((curves or {}).get(r.key, {})) for r in rs]
        hit = [x for x in reach if x]
        mean = lambda k: statistics.fmean(v[k] for v in got.values() if v.get(k) is not None) \
            if any(v.get(k) is not None for v in got.values()) else None  # noqa: E731
        out.append({"arm": arm, "params": rs[0].params, "steps": rs[0].steps, "lr": rs[0].lr,
                    "lr_val": choice.get("val"), "flops_per_token": rs[0].flops_per_token,
                    "planned_train_flops": rs[0].train_flops, "train_flops": mean("train_flops"),
                    "train_tokens": mean("train_tokens"), "train_time_s": mean("train_time_s"),
                    "seeds": len(rs), "reached": len(hit), "steps_to": _median([h["step"] for h in hit]),
                    "flops_to": _median([h["flops"] for h in hit]),
                    "time_to": _median([h["elapsed_s"] for h in hit])})
    return out


def compute_table(crows: list[dict]) -> tuple[list[str], list[list[str]]]:
    head = ["arm", "params", "steps", "lr", "FLOPs/token", "planned FLOPs", "train FLOPs", "train tokens", "wall s",
            f"steps to {LEARNED}", f"FLOPs to {LEARNED}", f"wall s to {LEARNED}"]
    body = []
    for c in crows:
        lr = f"{c['lr']:g}"
        if c.get("lr_val") and len(c["lr_val"]) > 1:
            lr += " (val acc " + ", ".join(f"{k:g}: {_g(v)}" for k, v in sorted(c["lr_val"].items())) + ")"
        reached = f" ({c['reached']}/{c['seeds']} seeds)"
        body.append([c["arm"], f"{c['params']:,}", str(c["steps"]), lr, _g(c["flops_per_token"], "{:.4g}"),
                     _g(c["planned_train_flops"], "{:.4g}"), _g(c["train_flops"], "{:.4g}"), _g(c["train_tokens"], "{:,.0f}"), _g(c["train_time_s"], "{:.1f}"),
                     ("not reached" if not c["reached"] else _g(c["steps_to"], "{:g}") + reached),
                     ("–" if not c["reached"] else _g(c["flops_to"], "{:.3g}")),
                     ("–" if not c["reached"] else _g(c["time_to"], "{:.1f}"))])
    return head, body


def plateau(task_ref: str, runs: list[Run], curves: dict[str, dict]) -> dict | None:
    """MQAR-style chance plateau (a task whose size is a number of key-value "pairs"): the loss at which a model
    that knows the answer is one of the context's values, but not which, sits (ln(pairs)), beside each arm's final
    training loss (mean over its seeds' last train records) and final validation loss."""
    from .. import load_task

    task = load_task(task_ref)
    if task.size_name != "pairs":
        return None
    ref = math.log(task.train_size)
    out = {"pairs": task.train_size, "ln_pairs": ref, "arms": {}}
    for arm in _order(r.model for r in runs if r.task_ref == task_ref):
        rs = [r for r in runs if r.task_ref == task_ref and r.model == arm]
        tr = [c["train"][-1]["loss"] for c in (curves.get(r.key, {}) for r in rs) if c.get("train")]
        fv = [c["final"].get("loss") for c in (curves.get(r.key, {}) for r in rs) if c.get("final")]
        tl = statistics.fmean(tr) if tr else None
        out["arms"][arm] = {"train_loss": tl, "val_loss": statistics.fmean([x for x in fv if x is not None])
                            if any(x is not None for x in fv) else None,
                            "ratio": None if tl is None else tl / ref}
    return out


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
    models = _order(s["model"] for s in at_trained)
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

    styles = STYLES
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


STYLES = {"bdh": ("o-", "C0"), "gpt-alibi": ("s--", "C1"), "gpt-rope": ("^:", "C2"),
          "gpt-alibi-flops": ("s-.", "C3"), "gpt-rope-flops": ("^-.", "C4")}


def plot_curves(runs: list[Run], curves: dict[str, dict], task: str, out: Path, lr_choice: dict | None = None,
                plateau_info: dict | None = None) -> Path | None:
    """curves_TASK.png: validation exact match along each run (one line per seed) against training FLOPs and
    against wall-clock; for a "pairs" task also the training loss against ln(pairs), the chance plateau."""
    from ...analysis.plotting import plt_figure, save

    chosen = [r for r in runs if r.task_name == task
              and r.lr == (lr_choice or {}).get((task, r.model), {}).get("lr", r.lr)]
    if not any(curves.get(r.key, {}).get("val") for r in chosen):
        return None
    n = 3 if plateau_info else 2
    fig, axes = plt_figure(1, n, width=5.5 * n, height=4)
    labelled = set()
    for r in chosen:
        c = curves.get(r.key, {})
        st, col = STYLES.get(r.model, ("o-", "C5"))
        lab = None if r.model in labelled else r.model
        labelled.add(r.model)
        v = [x for x in c.get("val", []) if x.get("flops") is not None]
        if v:
            axes[0].plot([x["flops"] for x in v], [x["accuracy"] for x in v], st, color=col, label=lab, alpha=0.8)
            axes[1].plot([x["elapsed_s"] for x in v], [x["accuracy"] for x in v], st, color=col, label=lab, alpha=0.8)
        if plateau_info and c.get("train"):
            axes[2].plot([x["step"] for x in c["train"]], [x["loss"] for x in c["train"]], st, color=col, label=lab,
                         alpha=0.8, ms=3)
    axes[0].set_xscale("log")
    axes[0].set(xlabel="training FLOPs (log)", ylabel="validation exact match", ylim=(-0.02, 1.02),
                title=f"{task}: accuracy vs training FLOPs")
    axes[1].set(xlabel="wall-clock s (training)", ylabel="validation exact match", ylim=(-0.02, 1.02),
                title=f"{task}: accuracy vs wall-clock")
    for ax in axes[:2]:
        ax.axhline(LEARNED, color="grey", lw=0.8, ls="--")
        ax.legend(fontsize=8)
    if plateau_info:
        axes[2].axhline(plateau_info["ln_pairs"], color="grey", lw=1, ls="--")
        axes[2].set(xlabel="step", ylabel="training loss (nats per answer)",
                    title=f"{task}: loss vs ln({plateau_info['pairs']}) = {plateau_info['ln_pairs']:.3f} (dashed)")
        axes[2].legend(fontsize=8)
    return save(fig, out / f"curves_{task}.png")


def write_reports(rows: list[dict], runs: list[Run], out: Path, *, preset_name: str, preset: dict, wall_s: float,
                  command: str, curves: dict[str, dict] | None = None, lr_choice: dict | None = None) -> None:
    from ...analysis.plotting import jsonable

    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "results.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows({k: r.get(k) for k in FIELDS} for r in rows)
    summary = summarize(rows)
    curves = curves or {}
    tasks = list(dict.fromkeys(r.task_name for r in runs))
    refs = {r.task_name: r.task_ref for r in runs}
    params = {t: {r.model: r.params for r in runs if r.task_name == t} for t in tasks}
    settings = {k: v for k, v in preset.items() if k != "tasks"}
    n_seeds = len({r.seed for r in runs})
    computes = {t: compute_rows(rows, runs, curves, lr_choice or {}, t) for t in tasks}
    learns = {t: learned(summary, t) for t in tasks}
    plateaus = {t: plateau(refs[t], runs, curves) for t in tasks}
    lr_json = {f"{t}/{m}": v for (t, m), v in (lr_choice or {}).items()}
    atomic_write_text(out / "summary.json", json.dumps(jsonable({
        "preset": preset_name, "command": command, "tasks": tasks, "seeds": n_seeds, "settings": settings,
        "params": params, "summary": summary, "wall_s": wall_s, "compute": computes,
        "learned": {t: {"learned": v[0], "best": v[1], "accuracy": v[2], "threshold": LEARNED}
                    for t, v in learns.items()},
        "lr_choice": lr_json, "plateau": {t: v for t, v in plateaus.items() if v},
        "curves": curves}), indent=2))
    steps = {t: train_settings(preset, t)["steps"] for t in tasks}
    steps_txt = (f"{next(iter(steps.values()))} steps" if len(set(steps.values())) == 1
                 else "steps " + ", ".join(f"{t} {v}" for t, v in steps.items()))
    intro = (f"Preset `{preset_name}`: {n_seeds} seeds per model, {steps_txt}, batch {preset['train']['batch_size']} "
             f"(the same examples in the same order for every model of a seed), sizes <= the training size. "
             f"Accuracy: exact match on {preset['n_examples']} fresh examples per size (test seed 1234), mean over "
             f"seeds [95% bootstrap interval: seeds resampled, then examples within each seed, percentile]; "
             f"tok-acc: the fraction of answer tokens right (partial credit), mean over seeds. "
             f"A task is learned only where some model reaches {LEARNED} exact match at the training size; "
             f"otherwise its table reads \"not learned at this budget\". Compute: training FLOPs = tokens seen x "
             f"`token_flops(config, T_train).training`; steps to {LEARNED}: the first evaluation along the run "
             f"(validation set, seed 777, sizes up to the training size) at {LEARNED}, median over the seeds that "
             f"reach it. Learning rate: the value with the best mean validation accuracy where several were swept. "
             f"State: BDH's ρ (constant) vs the GPT's KV cache at the sequence's length. "
             f"Wall time of this invocation {wall_s / 60:.1f} min (finished runs are reused).")
    md, body_html = report_head(f"BDH vs GPT on reasoning tasks ({preset_name} preset)", command, intro)
    for task in tasks:
        head, body, phead, pbody = task_tables(summary, task)
        pp = ", ".join(f"{m} {p:,}" for m, p in params[task].items())
        md += [f"## {task}", "", f"Parameters: {pp}.", ""]
        body_html += [f"<h2>{html.escape(task)}</h2>", f"<p>Parameters: {html.escape(pp)}.</p>"]
        ok, best, best_acc = learns[task]
        if ok:
            md += [_md(head, body), ""]
            body_html.append(_html_table(head, body))
        else:
            note = (f"**Not learned at this budget**: no model reaches {LEARNED} exact match at the training size "
                    f"(the best, {best}, reaches {_g(best_acc)}), so no accuracy is reported as a result here "
                    "(the numbers are in results.csv and summary.json).")
            md += [note, ""]
            body_html.append(f"<p>{html.escape(note)}</p>")
            pbody = []
        chead, cbody = compute_table(computes[task])
        ctext = ("Compute per run (means over seeds): planned FLOPs = steps x batch x T_train x FLOPs/token (what "
                 "FLOP matching equates); train FLOPs = the tokens actually seen (sizes drawn per step) x FLOPs/token:")
        md += [ctext, "", _md(chead, cbody), ""]
        body_html += [f"<p>{html.escape(ctext)}</p>", _html_table(chead, cbody)]
        pl = plateaus[task]
        if pl:
            txt = (f"Chance plateau: ln({pl['pairs']} pairs) = {pl['ln_pairs']:.3f} nats; final training loss "
                   + ", ".join(f"{a} {_g(v['train_loss'], '{:.3f}')} (x{_g(v['ratio'], '{:.2f}')})"
                               for a, v in pl["arms"].items())
                   + " (in parentheses: the ratio to ln(pairs); near 1.00 the model sits on the chance plateau, "
                     "no associative recall formed).")
            md += [txt, ""]
            body_html.append(f"<p>{html.escape(txt)}</p>")
        if pbody:
            md += ["BDH at other numbers of layer passes (weights shared across layers):", "", _md(phead, pbody), ""]
            body_html += ["<p>BDH at other numbers of layer passes (weights shared across layers):</p>",
                          _html_table(phead, pbody)]
        cpng = plot_curves(runs, curves, task, out, lr_choice, plateaus[task])
        for png in plot_task(summary, task, out) + ([cpng] if cpng else []):
            md += [f"![{png.stem}]({png.name})", ""]
            body_html.append(inline_png(png))
    atomic_write_text(out / "summary.md", "\n".join(md))
    write_html(out / "report.html", "bdh tasks compare", body_html)


def report_head(title: str, command: str, intro: str) -> tuple[list[str], list[str]]:
    """The first lines of summary.md and of report.html's body: the title, the command, the introduction."""
    return ([f"# {title}", "", f"`{command}`", "", intro, ""],
            [f"<h1>{html.escape(title)}</h1>", f"<p><code>{html.escape(command)}</code></p>",
             f"<p>{html.escape(intro)}</p>"])


def inline_png(png: Path) -> str:
    """An HTML paragraph with the image inlined (base64): a report that is one self-contained file."""
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return f'<p><img alt="{html.escape(png.stem)}" src="data:image/png;base64,{data}"></p>'


def write_html(path: Path, title: str, body_html: list[str]) -> None:
    """A self-contained HTML report (inline style, images inlined by `inline_png`), written atomically."""
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right}th{background:#f4f4f4}img{max-width:100%}")
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body_html) + "\n</body></html>\n")
    atomic_write_text(path, page)


