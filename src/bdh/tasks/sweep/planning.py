"""`bdh tasks sweep`, the plan: the options (--grid, --variant, --set) parsed and checked, the variants named,
and every run (variant x task x seed, plus the FLOP-matched GPT baselines) built on `bdh tasks compare`'s plan
and validated before anything runs."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import re

from ..compare.planning import CPU_FLOPS, FLOP_SUFFIX, MODELS, PRESETS, Run, expected_s, lr_note, plan, run_count

BASELINES = ("gpt-alibi", "gpt-rope")  # --baselines: compare's FLOP-matched arms MODEL-flops
HEADLINE_MULT = 4  # "best variant per task" at this multiple of the training size
SECTIONS = ("model", "data", "train")


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str  # "base", "damping=alibi,rope_fraction=0.5" (its non-default grid settings), or a --variant name
    settings: tuple[str, ...]  # `section.key=value` overrides, applied after the preset and --set
    dir: str  # directory-safe name: the runs OUT/runs/TASK/bdh/DIR/seedS
    scaled: bool = False  # a report label: the runs of DIR evaluated at layer passes scaled with the length


SCALED = "+scaled-passes"  # the name suffix of a variant's report label at scaled passes (--scale-passes)


def scaled_labels(variants: list[Variant], cap: int | None) -> list[Variant]:
    """The variants, each followed (with --scale-passes CAP) by its label at test-time passes scaled with the
    length: NAME+scaled-passes, the same runs evaluated at L x ceil(size / train size) passes, at most CAP."""
    if cap is None:
        return list(variants)
    note = f"test: L x ceil(size / train size) layer passes, at most {cap}"
    return [x for v in variants for x in (v, Variant(v.name + SCALED, v.settings + (note,), v.dir, scaled=True))]


# ----------------------------------------------------------------------------------------------- parsing
def split_top(text: str, sep: str) -> list[str]:
    """`text` split at `sep` outside quotes and brackets: 'null,"a,b",[1,2]' -> ['null', '"a,b"', '[1,2]']."""
    out, cur, depth, quote = [], [], 0, None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == sep and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return out


def _scratch():
    from ..run import task_run_config

    return task_run_config("parity")


def _key(item: str, flag: str, text: str) -> tuple[str, str, str]:
    """(section, key, value text) of "section.key=value"; ValueError naming the flag and its text."""
    if "=" not in item:
        raise ValueError(f"{flag} {text!r}: expected section.key=value, e.g. model.damping=alibi")
    dotted, value = item.split("=", 1)
    dotted = dotted.strip()
    if dotted.count(".") != 1 or dotted.split(".")[0] not in SECTIONS or not dotted.split(".")[1]:
        raise ValueError(f"{flag} {text!r}: expected a key of the form section.key (model.*, data.*, train.*)")
    if not value.strip():
        raise ValueError(f"{flag} {text!r}: no value for {dotted}")
    section, key = dotted.split(".")
    return section, key, value.strip()


def parsed_value(item: str, flag: str, text: str):
    """The value of one `section.key=value` as `--set` parses it (TOML, else a string; checked against the field's
    type: `bdh.training.config.apply_override`); ValueError naming the flag, its text and the problem."""
    from ...training.config import apply_override

    section, key, _ = _key(item, flag, text)
    cfg = _scratch()
    try:
        apply_override(cfg, item)
    except ValueError as e:
        msg = re.sub(r"^--set:? ?", "", str(e).splitlines()[0] if str(e) else "")
        raise ValueError(f"{flag} {text!r}: {msg}") from None
    return cfg.model[key] if section == "model" else getattr(getattr(cfg, section), key)


def parse_grid(text: str) -> tuple[str, list[str]]:
    """--grid 'model.damping=null,"alibi"' -> ("model.damping", ['null', '"alibi"']): each value checked, none
    repeated."""
    section, key, values = _key(text, "--grid", text)
    items = split_top(values, ",")
    if any(not v for v in items):
        raise ValueError(f"--grid {text!r}: an empty value; expected KEY=V1,V2,... (comma-separated)")
    seen = []
    for v in items:
        p = parsed_value(f"{section}.{key}={v}", "--grid", text)
        if p in seen:
            raise ValueError(f"--grid {text!r}: the value {v} is given twice")
        seen.append(p)
    return f"{section}.{key}", items


def parse_variant(text: str) -> tuple[str, tuple[str, ...]]:
    """--variant 'best:model.damping="alibi";model.rope_theta=1000' -> ("best", (settings...)); 'NAME:' = no
    settings (the base)."""
    if ":" not in text:
        raise ValueError(f"--variant {text!r}: expected NAME:section.key=value;section.key=value")
    name, rest = text.split(":", 1)
    name = name.strip()
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ValueError(f"--variant {text!r}: expected a name before ':' (no '/', not starting with '.')")
    items = [s for s in split_top(rest, ";") if s] if rest.strip() else []
    keys = []
    for it in items:
        section, key, _ = _key(it, "--variant", text)
        if (section, key) in keys:
            raise ValueError(f"--variant {text!r}: {section}.{key} is set twice")
        keys.append((section, key))
        parsed_value(it, "--variant", text)
    return name, tuple(items)


def parse_sets(items) -> tuple[str, ...]:
    """--set items, each checked like `bdh train --set` (a bad key or value: ValueError naming it)."""
    out = []
    for it in items or ():
        parsed_value(it, "--set", it)
        out.append(it.strip())
    return tuple(out)


def parse_baselines(text: str | None) -> tuple[str, ...]:
    """--baselines "gpt-alibi,gpt-rope" -> the FLOP-matched arms ("gpt-alibi-flops", "gpt-rope-flops"); "none" or
    empty: ()."""
    if text is None or text.strip().lower() in ("", "none"):
        return ()
    items = [t.strip() for t in text.split(",")]
    arms = []
    for t in items:
        base = t[:-len(FLOP_SUFFIX)] if t.endswith(FLOP_SUFFIX) else t
        if base not in BASELINES or base + FLOP_SUFFIX in arms:
            raise ValueError(f"--baselines {text!r}: expected distinct names from {', '.join(BASELINES)} (or none)")
        arms.append(base + FLOP_SUFFIX)
    return tuple(a for a in (b + FLOP_SUFFIX for b in BASELINES) if a in arms)


def parse_mults(text: str | None) -> list[int] | None:
    """--mults "1,2,4,8" -> [1, 2, 4, 8] (multiples of the training size); None when not given."""
    if text is None:
        return None
    try:
        vals = [int(t) for t in text.split(",")]
    except ValueError:
        vals = []
    if not vals or any(v < 1 for v in vals) or len(set(vals)) != len(vals):
        raise ValueError(f"--mults {text!r}: expected distinct positive integers, e.g. 1,2,4,8,16,32")
    return sorted(vals)


# ----------------------------------------------------------------------------------------------- variants
def _display(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ",".join(_display(x) for x in v) + "]"
    return str(v)


def dir_name(name: str) -> str:
    """A directory-safe, unique form of a variant name (characters outside [A-Za-z0-9._,=+-] or a long name: a hash
    of the name appended)."""
    safe = re.sub(r"[^A-Za-z0-9._,=+-]", "_", name).lstrip(".") or "_"
    if safe != name or len(safe) > 80:
        safe = f"{safe[:60]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return safe


def _resolved(cfg, section: str, key: str):
    """The value of section.key in a resolved RunConfig (a model field at its type's default where not set)."""
    if section == "model":
        return getattr(cfg.model_config(256), key, cfg.model.get(key))
    return getattr(getattr(cfg, section), key)


def make_variants(grids: list[tuple[str, list[str]]], named: list[tuple[str, tuple[str, ...]]],
                  base_cfg) -> list[Variant]:
    """The cartesian product of the grids (each named by its settings that differ from `base_cfg`, the resolved
    config of the base BDH: "base" when none do), then the named variants; ValueError on a repeated name."""
    from ...training.config import apply_override

    shorts = [k.split(".")[1] for k, _ in grids]
    label = {k: (k.split(".")[1] if shorts.count(k.split(".")[1]) == 1 else k) for k, _ in grids}
    out: list[Variant] = []
    if grids:
        for combo in itertools.product(*[[(k, v) for v in vals] for k, vals in grids]):
            settings = tuple(f"{k}={v}" for k, v in combo)
            cfg = copy.deepcopy(base_cfg)
            parts = []
            for k, v in combo:
                section, key = k.split(".")
                try:
                    before = _resolved(cfg, section, key)
                    apply_override(cfg, f"{k}={v}")
                    after = _resolved(cfg, section, key)
                except ValueError as e:
                    raise ValueError(f"--grid {k}={v}: {e}") from None
                if after != before:
                    parts.append(f"{label[k]}={_display(after)}")
            out.append(Variant(",".join(parts) or "base", settings, ""))
    out += [Variant(n, s, "") for n, s in named]
    if not out:
        out = [Variant("base", (), "")]
    names = [v.name for v in out]
    for n in names:
        if names.count(n) > 1:
            raise ValueError(f"variant {n!r} appears twice (a --variant name repeated, or grid values that give the "
                             "same settings): expected distinct variants")
        if n in (b + FLOP_SUFFIX for b in BASELINES) or n in MODELS:
            raise ValueError(f"--variant {n!r}: the name of a baseline arm; choose another name")
    dirs = [dir_name(n) for n in names]
    return [dataclasses.replace(v, dir=d) for v, d in zip(out, dirs)]


# ----------------------------------------------------------------------------------------------- the plan
def sweep_preset(preset_name: str, sets: tuple[str, ...], mults: list[int] | None) -> tuple[dict, tuple[str, ...]]:
    """(the preset's settings with --set applied, the --set items left to apply to every BDH variant).

    model.* items become the base BDH's fields (the GPT baselines are matched to its parameters and FLOPs); items
    naming one of the preset's training settings (train.steps, batch_size, lr, warmup, eval_every) replace it for
    every arm and task; the rest (other train.*, data.*) apply to the BDH variants only. Evaluation: at `mults`
    (default the preset's multiples and BDH's further ones) for every arm, at the trained number of passes."""
    if preset_name not in PRESETS:
        plan(preset_name)  # compare's error naming the presets
    preset = copy.deepcopy(PRESETS[preset_name])
    rest = []
    for it in sets:
        section, key, _ = _key(it, "--set", it)
        value = parsed_value(it, "--set", it)
        if section == "model" and key != "model_type":
            preset["bdh"][key] = value
        elif section == "train" and key in preset["train"]:
            preset["train"][key] = value
            for t in preset.get("task_train", {}).values():
                t.pop(key, None)
        else:
            rest.append(it)
    from ...interface import config_from_dict

    try:
        config_from_dict({"model_type": MODELS[0], **preset["bdh"], "vocab_size": 256})
    except ValueError as e:
        raise ValueError(f"--set {' '.join(sets)}: {e}") from None
    preset["mults"] = mults or sorted(set(preset["mults"]) | set(preset.get("bdh_mults", [])))
    preset["bdh_mults"], preset["passes"] = [], []
    preset["match"] = ("flops",)
    for k in ("lrs", "lr_seeds"):
        preset.pop(k, None)
    return preset, tuple(rest)


def _resolve(r: Run, cfg) -> Run:
    """`r` with the fields of its resolved config: model fields, steps, lr, batch, parameters and FLOPs per token
    (and the time estimate scaled by its training FLOPs)."""
    from ...interface import config_from_dict, token_flops

    from .. import load_task

    V = load_task(r.task_ref).vocab_size
    mc = {k: v for k, v in cfg.model.items() if k != "vocab_size"}
    mc["model_type"] = cfg.model_type
    config = config_from_dict({**mc, "vocab_size": V})
    fpt = token_flops(config, r.T_train).training
    batch = cfg.train.batch_size * cfg.train.grad_accum
    old = r.steps * r.batch * r.T_train * r.flops_per_token
    new = cfg.train.steps * batch * r.T_train * fpt
    return dataclasses.replace(r, model_cfg=mc, params=config.num_params(), steps=cfg.train.steps, lr=cfg.train.lr,
                               batch=batch, flops_per_token=fpt, est_s=max(1.0, r.est_s + (new - old) / CPU_FLOPS))


def _check_lr_free(lrs, grid_list, named, sets) -> None:
    """With a learning-rate sweep, no --grid, --variant or --set may set train.lr (it would replace the swept
    value): ValueError naming the option."""
    if not lrs:
        return
    items = [(f"--grid {k}", k) for k, _ in grid_list] + [(f"--variant {n}", s.split("=", 1)[0]) for n, ss in named
                                                         for s in ss] + [(f"--set {s}", s.split("=", 1)[0]) for s in sets]
    for where, k in items:
        if k.strip() == "train.lr":
            raise ValueError(f"{where}: sets train.lr while --lrs sweeps it; expected one or the other")


def plan_sweep(preset_name: str, tasks: list[str] | None = None, seeds: int | None = None, *,
               grids=(), variants=(), sets=(), mults: list[int] | None = None, baselines: tuple[str, ...] = (),
               lrs: list[float] | None = None, lr_seeds: int = 1, scale_passes: int | None = None,
               device: str | None = None, threads: int | None = None) -> tuple[dict, list[Variant], list[Run]]:
    """(the preset's settings, the variants, every run): each variant of BDH per task and seed (compare's BDH run
    with the variant's settings after --set), then the requested FLOP-matched GPT baselines (compare's arms at
    the base BDH: preset + --set). `grids`: --grid texts; `variants`: --variant texts; `sets`: --set items.
    `lrs`: a learning-rate sweep per task, variant and baseline, on the first `lr_seeds` seeds (compare's: the
    other seeds train at the value chosen on the validation set). `scale_passes`: every BDH variant also evaluated
    at `scaled_passes(L, train size, scale_passes)` layer passes (`scaled_pass_evals`).
    Every run's config is resolved and validated here (ValueError naming the variant and the problem)."""
    from ..compare.running import run_config

    sets = parse_sets(sets)
    grid_list = [parse_grid(g) for g in grids]
    keys = [k for k, _ in grid_list]
    for k in keys:
        if keys.count(k) > 1:
            raise ValueError(f"--grid {k}: the key is given twice; expected one --grid per key")
    named = [parse_variant(v) for v in variants]
    _check_lr_free(lrs, grid_list, named, sets)
    if scale_passes is not None:
        from ..evaluate import check_passes

        check_passes(scale_passes, "--scale-passes")
    preset, common = sweep_preset(preset_name, sets, mults)
    preset, cruns = plan(preset_name, tasks, seeds, match=("flops",), settings=preset, lrs=lrs, lr_seeds=lr_seeds)
    base_runs = [r for r in cruns if r.model == MODELS[0]]
    try:
        base_cfg = run_config(dataclasses.replace(base_runs[0], overrides=common), preset, device, threads)
    except ValueError as e:
        raise ValueError(f"--set {' '.join(sets)}: {e}") from None
    vs = make_variants(grid_list, named, base_cfg)
    runs: list[Run] = []
    for r in base_runs:
        for v in vs:
            rv = dataclasses.replace(r, overrides=common + v.settings, variant=v.dir)
            try:
                cfg = run_config(rv, preset, device, threads)
            except ValueError as e:
                what = "; ".join(v.settings) or "no settings"
                raise ValueError(f"variant {v.name!r} ({what}) on {r.task_name}: {e}") from None
            rv = _resolve(rv, cfg)
            if scale_passes is not None:
                rv = dataclasses.replace(rv, **scaled_pass_evals(rv, scale_passes, preset["n_examples"]))
            runs.append(rv)
    runs += [r for r in cruns if r.model in baselines]
    return preset, vs, runs


def scaled_pass_evals(r: Run, cap: int, n_examples: int) -> dict:
    """The fields of a BDH run evaluated also at more layer passes on longer inputs: "pass_evals" (passes, size)
    for every evaluated size whose `scaled_passes(L, train size, cap)` differs from L, and "est_s" with their
    forward FLOPs (`n_examples` per size). L: the run's trained passes (`model.n_layer`)."""
    from .. import load_task
    from ..compare.planning import _flops_per_token, _seq_len
    from ..evaluate import scaled_passes

    L = r.model_cfg["n_layer"]
    if cap < L:
        raise ValueError(f"--scale-passes {cap}: expected at least the trained passes, model.n_layer = {L}")
    rule = scaled_passes(L, r.train_size, cap)
    task = load_task(r.task_ref)
    pe = [(rule(s), s) for s in r.eval_sizes if rule(s) != L]
    lens = {s: _seq_len(task, s) for _, s in pe}
    flops = sum(n_examples * lens[s] * _flops_per_token(r.model_cfg, task.vocab_size, lens[s], p).forward
                for p, s in pe)
    return {"pass_evals": pe, "est_s": r.est_s + flops / CPU_FLOPS}


def plan_table(preset_name: str, variants: list[Variant], runs: list[Run], sets: tuple[str, ...] = ()) -> str:
    """A markdown table of the sweep's plan: per task and variant (and baseline), parameters, steps, FLOPs and the
    estimated time."""
    name = {v.dir: v.name for v in variants}
    settings = {v.dir: "; ".join(v.settings) or "-" for v in variants}
    est = expected_s(runs)
    n, sweep = run_count(runs), lr_note(runs)
    scaled = sorted({p for r in runs for p, _ in r.pass_evals})
    scaled = f"; also evaluated at scaled layer passes ({', '.join(map(str, scaled))})" if scaled else ""
    lines = [f"preset {preset_name}: {len(variants)} variants, {n} runs, estimated {est / 60:.1f} min on one CPU "
             f"thread at {CPU_FLOPS:.2g} FLOP/s" + (f"; --set {' '.join(sets)}" if sets else "") + sweep + scaled, "",
             "| task | variant | settings | params | steps | lr | FLOPs/token | train FLOPs | seeds | eval sizes "
             "| est. min |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault((r.task_name, r.model, r.variant), []).append(r)
    for (task, model, vdir), rs in groups.items():
        r = rs[0]
        label = name.get(vdir, model) if model == MODELS[0] else f"{model} (baseline)"
        lines.append(f"| {task} | {label} | {settings.get(vdir, '-') if model == MODELS[0] else 'FLOP-matched'} | "
                     f"{r.params:,} | {r.steps} | {', '.join(f'{v:g}' for v in dict.fromkeys(x.lr for x in rs))} | "
                     f"{r.flops_per_token:.4g} | {r.train_flops:.4g} | {len({x.seed for x in rs})} | "
                     f"{', '.join(map(str, r.eval_sizes))} | {expected_s(rs) / 60:.1f} |")
    return "\n".join(lines)
