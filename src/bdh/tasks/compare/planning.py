"""`bdh tasks compare`, the plan: presets, the three models at matched parameters, sizes and passes, and each
run's estimated time from the model types' FLOP models (`bdh.interface.token_flops`)."""

from __future__ import annotations

import dataclasses
import math
import random
import re

from ...baselines.ladders import MAX_PARAM_GAP

MODELS = ("bdh", "gpt-alibi", "gpt-rope")
MATCHES = ("params", "flops")  # --match: how the GPT arms are matched to BDH
FLOP_SUFFIX = "-flops"  # the FLOP-matched arm of a GPT: "gpt-rope-flops" (same model, more or fewer steps)


def arms(match: tuple[str, ...] = ("params",)) -> list[str]:
    """The arms of a comparison in report order: BDH, then each GPT parameter-matched and/or FLOP-matched."""
    out = [MODELS[0]]
    for m in MODELS[1:]:
        out += [m] * ("params" in match) + [m + FLOP_SUFFIX] * ("flops" in match)
    return out


def parse_match(text: str | None) -> tuple[str, ...]:
    """--match "params" (default), "flops" or "params,flops" -> a tuple of MATCHES; ValueError naming the value."""
    items = [t.strip() for t in ("params" if text is None else text).split(",")]
    if not items or any(t not in MATCHES for t in items) or len(set(items)) != len(items):
        raise ValueError(f"--match {text!r}: expected params, flops or params,flops")
    return tuple(m for m in MATCHES if m in items)


def parse_lrs(text: str | None) -> list[float] | None:
    """--lrs "1e-3,2e-3,4e-3" -> [0.001, 0.002, 0.004] (a learning-rate sweep); None when not given."""
    if text is None:
        return None
    try:
        vals = [float(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(f"--lrs {text!r}: expected comma-separated learning rates, e.g. 1e-3,2e-3,4e-3") from None
    if not vals or any(not (0 < v < 1) or math.isnan(v) for v in vals) or len(set(vals)) != len(vals):
        raise ValueError(f"--lrs {text!r}: expected distinct learning rates in (0, 1), e.g. 1e-3,2e-3,4e-3")
    return vals

# Each preset: tasks, seeds, the BDH shape, the GPT depth/heads (width and MLP solved to match BDH), training
# (steps, batch, lr; the rest from the shipped task-tiny config), and the evaluation grid.
PRESETS: dict[str, dict] = {
    # the test suite's: one task, two seeds, seconds
    "smoke": {
        "tasks": ["parity"], "seeds": 2,
        "bdh": {"n_layer": 2, "n_embd": 16, "n_head": 2, "mlp_internal_dim_multiplier": 4, "dropout": 0.0},
        "gpt": {"n_layer": 2, "n_head": 2, "dropout": 0.0},
        "train": {"steps": 8, "batch_size": 8, "lr": 3e-3, "warmup": 2, "eval_every": 4},
        "mults": [1, 2], "bdh_mults": [4], "passes": ["L-1", "L+1"], "pass_mults": [1],
        "n_examples": 16, "eval_batch_size": 16,
    },
    # 2 CPU cores (--jobs 2 --threads 1), <= 60 min: 7 tasks whose training size the small models can learn or
    # nearly learn in minutes (vartrack, addition, eca, sudoku4, reverse, passkey: the gpu preset). Compute-matched:
    # each GPT has BDH's parameters (+-5%) and is trained for the steps that equal BDH's training FLOPs ("flops").
    # Converged where the budget allows: 3 learning rates on seed 0 (chosen on the validation set), seeds 1-2 at
    # the chosen one; validation every 100 steps (steps to 0.95). Measured in a pilot (1 seed, lr 3e-3): BDH learns
    # copy, dyck, selective-copy in <= 1000 steps, the GPTs within their FLOP-matched steps; induction and MQAR
    # are still improving, so they get 2x and 2.5x the steps.
    "cpu": {
        "tasks": ["parity", "copy", "selective-copy", "dyck", "induction", "mqar", "s5"], "seeds": 3,
        "bdh": {"n_layer": 3, "n_embd": 64, "n_head": 4, "mlp_internal_dim_multiplier": 4, "dropout": 0.0},
        "gpt": {"n_layer": 3, "n_head": 4, "dropout": 0.0},
        "train": {"steps": 1000, "batch_size": 32, "lr": 3e-3, "warmup": 50, "eval_every": 100},
        "task_train": {"induction": {"steps": 2000}, "mqar": {"steps": 2500}},
        "match": ("flops",), "lrs": [1e-3, 3e-3, 1e-2], "lr_seeds": 1,
        "mults": [1, 2, 4, 8, 16, 32], "bdh_mults": [], "passes": ["L-1", "L+1", "2L"], "pass_mults": [1, 2],
        "n_examples": 1000, "eval_batch_size": 64,
    },
    # one task in <= 5 min on 2 cores (--jobs 2): copy (teacher-forced), the cpu preset's models and learning rate
    # 3e-3 (no sweep), 3 seeds, FLOP-matched GPTs
    "quick": {
        "tasks": ["copy"], "seeds": 3,
        "bdh": {"n_layer": 3, "n_embd": 64, "n_head": 4, "mlp_internal_dim_multiplier": 4, "dropout": 0.0},
        "gpt": {"n_layer": 3, "n_head": 4, "dropout": 0.0},
        "train": {"steps": 1000, "batch_size": 32, "lr": 3e-3, "warmup": 50, "eval_every": 100},
        "match": ("flops",), "mults": [1, 2, 4, 8, 16, 32], "bdh_mults": [], "passes": ["L+1"], "pass_mults": [1],
        "n_examples": 1000, "eval_batch_size": 64,
    },
    # one large GPU (bf16 autocast where supported): every task, ~6M-parameter models, FLOP-matched GPTs (3x the
    # steps: BDH costs ~3x a GPT's FLOPs per token at these lengths), a 3-value sweep on seed 0, sizes to 32x
    "gpu": {
        "tasks": ["parity", "copy", "reverse", "selective-copy", "dyck", "induction", "mqar", "s5", "vartrack",
                  "addition", "eca", "sudoku4", "sudoku9", "passkey"],
        "seeds": 3,
        "bdh": {"n_layer": 6, "n_embd": 256, "n_head": 4, "mlp_internal_dim_multiplier": 32, "dropout": 0.0},
        "gpt": {"n_layer": 6, "n_head": 8, "dropout": 0.0},
        "train": {"steps": 5000, "batch_size": 64, "lr": 1e-3, "warmup": 250, "eval_every": 250},
        "match": ("flops",), "lrs": [3e-4, 1e-3, 3e-3], "lr_seeds": 1,
        "mults": [1, 2, 4, 8, 16, 32], "bdh_mults": [64, 128], "passes": ["L-1", "L+1", "2L"],
        "pass_mults": [1, 2], "n_examples": 1024, "eval_batch_size": 128,
    },
}
# effective training/eval speed used for the time estimate of `--list` and the progress bar's weights
# (floating-point operations per second of one CPU thread, measured on this project's 2-core machine: the
# cpu preset's pilot ran BDH at 3.6e10-7.3e10 and the GPTs at ~3e10 per thread)
CPU_FLOPS = 4e10

# ----------------------------------------------------------------------------------------------- the plan
@dataclasses.dataclass
class Run:
    task_ref: str
    task_name: str
    model: str  # bdh | gpt-alibi | gpt-rope
    seed: int
    model_cfg: dict  # model fields incl. model_type
    params: int
    train_size: int
    eval_sizes: list[int]  # at the trained number of passes
    pass_evals: list[tuple[int, int]]  # (passes, size): BDH at other depths
    est_s: float
    steps: int = 0  # training steps (a FLOP-matched arm: solved so its training FLOPs equal BDH's)
    lr: float = 0.0  # peak learning rate
    batch: int = 0  # examples per step
    T_train: int = 0  # tokens of one example at the training size
    flops_per_token: float = 0.0  # training FLOPs per token at T_train (`token_flops(config, T).training`)
    sweep: bool = False  # one of several learning rates (--lrs): its own run directory
    pending: bool = False  # a seed past the tuning seeds (--lr-seeds): trained only at the value chosen on those
    overrides: tuple[str, ...] = ()  # `section.key=value` applied last in `running.run_config` (bdh tasks sweep)
    variant: str = ""  # a directory-safe name of `overrides`: its own run directory TASK/ARM/VARIANT/seedS

    @property
    def key(self) -> str:
        return (f"{self.task_name}/{self.model}/" + (f"{self.variant}/" if self.variant else "")
                + (f"lr{self.lr:g}/" if self.sweep else "") + f"seed{self.seed}")

    @property
    def train_flops(self) -> float:
        """Planned training FLOPs: steps x batch x T_train x training FLOPs per token (examples shorter than the
        training size are padded to their batch's longest, so a run's recorded tokens are at most this)."""
        return self.steps * self.batch * self.T_train * self.flops_per_token


def match_gpt(bdh_params: int, vocab: int, gpt: dict, positions: str) -> dict:
    """A GPT of `gpt`'s depth and heads with parameters matched to `bdh_params`: the width (a multiple of 2 x heads,
    so RoPE's head dimension is even) whose solved MLP width is closest to 4x, then the MLP width solved exactly."""
    from ...baselines.gpt import GPTConfig

    L, h = gpt["n_layer"], gpt["n_head"]
    best = None
    for d in range(2 * h, 4097, 2 * h):
        fixed = GPTConfig(n_layer=L, n_embd=d, n_head=h, vocab_size=vocab, mlp_dim=1, positions=positions).num_params()
        H = 1 + round((bdh_params - fixed) / (2 * L * d))  # each MLP unit: d in + d out weights per layer
        if H < d:  # an MLP narrower than the width: d too large
            break
        score = abs(math.log(H / (4 * d)))
        if best is None or score < best[0]:
            best = (score, d, H)
    if best is None:
        raise ValueError(f"no GPT with n_layer={L}, n_head={h} has about {bdh_params:,} parameters at vocabulary "
                         f"{vocab}: expected a larger BDH or a shallower GPT in the preset")
    _, d, H = best
    return {"model_type": "gpt", **gpt, "n_embd": d, "mlp_dim": H, "positions": positions}


def model_configs(preset: dict, vocab: int) -> dict[str, tuple[dict, int]]:
    """model name -> (model config fields incl. model_type, parameters) at `vocab`; ValueError beyond +-5%."""
    from ...interface import config_from_dict

    bdh = {"model_type": "bdh", **preset["bdh"]}
    pb = config_from_dict({**bdh, "vocab_size": vocab}).num_params()
    out = {"bdh": (bdh, pb)}
    for pos in ("alibi", "rope"):
        g = match_gpt(pb, vocab, preset["gpt"], pos)
        pg = config_from_dict({**g, "vocab_size": vocab}).num_params()
        if abs(pg - pb) / pb > MAX_PARAM_GAP:
            raise ValueError(f"GPT ({pos}) has {pg:,} parameters, BDH {pb:,} at vocabulary {vocab}: more than "
                             f"{MAX_PARAM_GAP:.0%} apart; expected a preset whose models can be matched")
        out[f"gpt-{pos}"] = (g, pg)
    return out


def passes_list(spec: list[str], L: int) -> list[int]:
    """["L-1", "L+1", "2L"] at L -> [L-1, L+1, 2L], without L itself, values < 1 or repeats."""
    out = []
    for s in spec:
        m = re.fullmatch(r"(\d*)L([+-]\d+)?", s)
        v = (int(m.group(1) or 1) * L + int(m.group(2) or 0)) if m else int(s)
        if v >= 1 and v != L and v not in out:
            out.append(v)
    return out


def scaled_sizes(task, mults) -> list[int]:
    """train_size x each multiple, clipped to the task's largest size, without repeats."""
    out = []
    for m in mults:
        s = min(task.train_size * m, task.largest_size)
        if s not in out:
            out.append(s)
    return out


def _seq_len(task, size: int) -> int:
    return len(task.checked_example(random.Random(0), size).inputs)


def _flops_per_token(cfg: dict, vocab: int, T: int, passes: int | None = None):
    """Matmul FLOPs per token of a sequence of T tokens (`bdh.interface.token_flops`: the form `forward` runs),
    at `passes` layer passes (BDH's weights shared across layers) when given."""
    from ...interface import config_from_dict, token_flops

    config = config_from_dict({**cfg, "vocab_size": vocab, **({"n_layer": passes} if passes else {})})
    return token_flops(config, T)


def plan(preset_name: str, tasks: list[str] | None = None, seeds: int | None = None, *,
         match: tuple[str, ...] | None = None, lrs: list[float] | None = None,
         lr_seeds: int | None = None, settings: dict | None = None) -> tuple[dict, list[Run]]:
    """The preset and every run of the comparison, validated (tasks, sizes, parameter matching) before anything
    runs or is written.

    `match`: "params" (the GPTs train the preset's steps, at BDH's parameters) and/or "flops" (arms MODEL-flops: the
    same GPTs trained for round(steps x BDH's training FLOPs per token / the GPT's) steps, so their total training
    FLOPs equal BDH's to within one step). `lrs`: a learning-rate sweep, every arm and seed at each value (the
    value used is chosen afterwards on the runs' validation sets); default the preset's "lrs", else its one "lr".
    `lr_seeds`: the seeds the sweep runs on (default the preset's "lr_seeds", else all); the runs of the other
    seeds are `pending`: each trains only at the value chosen on the tuning seeds (`running.compare`).
    `match` default: the preset's "match", else ("params",). `settings`: the preset's settings to use instead of
    PRESETS[preset_name] (`bdh tasks sweep`: the preset with its --set applied)."""
    from ...interface import get_model_type
    from .. import load_task

    if preset_name not in PRESETS:
        raise ValueError(f"--preset {preset_name!r}: expected one of {', '.join(p for p in PRESETS if p != 'smoke')}"
                         " (or smoke, the test suite's)")
    preset = PRESETS[preset_name] if settings is None else settings
    refs = list(tasks) if tasks else list(preset["tasks"])
    if len(set(refs)) != len(refs):
        raise ValueError(f"--tasks {','.join(refs)!r}: a task is named twice")
    n_seeds = preset["seeds"] if seeds is None else seeds
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise ValueError(f"--seeds {n_seeds!r}: expected a positive integer")
    match = tuple(preset.get("match", ("params",))) if match is None else match
    tune = preset.get("lr_seeds", n_seeds) if lr_seeds is None else lr_seeds
    if isinstance(tune, bool) or not isinstance(tune, int) or tune < 1:
        raise ValueError(f"--lr-seeds {tune!r}: expected a positive integer (seeds the learning rates are swept on)")
    runs: list[Run] = []
    for ref in refs:
        task = load_task(ref)  # TaskError (a ValueError) names an unknown task
        task.check_size(task.train_size)
        t = train_settings(preset, task.name)
        steps, batch = t["steps"], t["batch_size"]
        lr_list = list(lrs or preset.get("lrs") or [t["lr"]])
        cfgs = model_configs(preset, task.vocab_size)
        sizes = scaled_sizes(task, preset["mults"])
        far = [s for s in scaled_sizes(task, preset["bdh_mults"]) if s not in sizes]
        L = preset["bdh"]["n_layer"]
        pass_sizes = scaled_sizes(task, preset["pass_mults"])
        lens = {s: _seq_len(task, s) for s in dict.fromkeys(sizes + far + pass_sizes + [task.train_size])}
        T_train = lens[task.train_size]
        V = task.vocab_size
        fpt = {m: _flops_per_token(cfg, V, T_train).training for m, (cfg, _) in cfgs.items()}
        for arm in arms(match):
            model = arm[:-len(FLOP_SUFFIX)] if arm.endswith(FLOP_SUFFIX) else arm
            cfg, params = cfgs[model]
            # FLOP-matched: the steps whose training FLOPs equal BDH's (same batch, same examples in the same order)
            arm_steps = max(1, round(steps * fpt[MODELS[0]] / fpt[model])) if arm != model else steps
            # the studied model (the first arm) is evaluated further out; other layer passes where the type shares
            # its weights across layers (capability "layer_passes")
            ev = sizes + (far if model == MODELS[0] else [])
            shared = "layer_passes" in get_model_type(cfg["model_type"]).model_class.capabilities
            pe = [(p, s) for p in passes_list(preset["passes"], L) for s in pass_sizes] if shared else []
            flops = arm_steps * batch * T_train * fpt[model]
            flops += sum(preset["n_examples"] * lens[s] * _flops_per_token(cfg, V, lens[s]).forward for s in ev)
            flops += sum(preset["n_examples"] * lens[s] * _flops_per_token(cfg, V, lens[s], p).forward for p, s in pe)
            for lr in lr_list:
                for seed in range(n_seeds):
                    runs.append(Run(ref, task.name, arm, seed, cfg, params, task.train_size, ev, pe,
                                    flops / CPU_FLOPS + 2.0, steps=arm_steps, lr=lr, batch=batch, T_train=T_train,
                                    flops_per_token=fpt[model], sweep=len(lr_list) > 1,
                                    pending=len(lr_list) > 1 and seed >= tune))
    return preset, runs


def expected_s(runs: list[Run]) -> float:
    """The plan's estimated single-thread seconds: pending runs count once per (task, arm, seed), not per lr."""
    n_lrs = {(r.task_name, r.model): len({x.lr for x in runs if (x.task_name, x.model) == (r.task_name, r.model)})
             for r in runs}
    return sum(r.est_s / (n_lrs[(r.task_name, r.model)] if r.pending else 1) for r in runs)


def run_count(runs: list[Run]) -> int:
    """Trainings the plan runs: every run of the tuning seeds, and one per pending (task, arm, variant, seed)."""
    return sum(1 for r in runs if not r.pending) + len({(r.task_name, r.model, r.variant, r.seed)
                                                       for r in runs if r.pending})


def lr_note(runs: list[Run]) -> str:
    """"; learning rates swept on seed(s) ..." for a plan with a learning-rate sweep, else ""."""
    tuned = sorted({r.seed for r in runs if r.sweep and not r.pending})
    return (f"; learning rates swept on seed(s) {', '.join(map(str, tuned))}, the other seeds trained at the value "
            "chosen there" if any(r.pending for r in runs) else "")


def plan_table(preset_name: str, runs: list[Run]) -> str:
    """A markdown table of the plan: per task and model, the parameters, the shape, the sizes and the estimate."""
    n_run, sweep = run_count(runs), lr_note(runs)
    est = expected_s(runs)
    lines = [f"preset {preset_name}: {n_run} runs, {(est - 2.0 * n_run) * CPU_FLOPS:.3g} FLOPs (training and "
             f"evaluation), estimated {est / 60:.1f} min on one CPU thread at {CPU_FLOPS:.2g} FLOP/s{sweep}",
             "FLOPs: `bdh.interface.token_flops(config, T).training` per token at the training size's T (3 x forward); "
             "train FLOPs = steps x batch x T x FLOPs/token, per seed. Arms MODEL-flops: FLOP-matched (the steps "
             "solved so their training FLOPs equal BDH's); the others: parameter-matched at BDH's steps.", "",
             "| task | model | params | shape | steps | lr | FLOPs/token | train FLOPs | seeds | eval sizes "
             "| other passes | est. min |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    seen: dict[tuple, list[Run]] = {}
    for r in runs:
        seen.setdefault((r.task_name, r.model), []).append(r)
    for (task, model), rs in seen.items():
        r = rs[0]
        c = r.model_cfg
        shape = f"L={c['n_layer']} d={c['n_embd']} h={c['n_head']}"
        if "mlp_internal_dim_multiplier" in c:  # (by the config's fields, not by model name)
            shape += f" n={c['mlp_internal_dim_multiplier'] * c['n_embd']}"
        if "mlp_dim" in c:
            shape += f" mlp={c['mlp_dim']}"
        passes = ", ".join(sorted({str(p) for p, _ in r.pass_evals})) or "-"
        lrs = ", ".join(f"{v:g}" for v in dict.fromkeys(x.lr for x in rs))
        n_seeds = len({x.seed for x in rs})
        lines.append(f"| {task} | {model} | {r.params:,} | {shape} | {r.steps} | {lrs} | {r.flops_per_token:.4g} | "
                     f"{r.train_flops:.4g} | {n_seeds} | {', '.join(map(str, r.eval_sizes))} | "
                     f"{passes} | {expected_s(rs) / 60:.1f} |")
    return "\n".join(lines)



def train_settings(preset: dict, task_name: str) -> dict:
    """The preset's training settings for one task: `train`, updated by `task_train[task_name]` where given."""
    return {**preset["train"], **preset.get("task_train", {}).get(task_name, {})}

