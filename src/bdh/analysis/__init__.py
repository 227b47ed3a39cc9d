"""Interpretability and analysis of trained BDH-GPU models (paper §5-§7).

| module      | what                                                                                      |
|-------------|-------------------------------------------------------------------------------------------|
| `record`    | `run_with_cache` / `run_with_hooks`: x_sparse, y_sparse, x*y, attention per token, layer, head |
| `sparsity`  | fraction of non-zero activations per layer, head, RoPE band; the repeated-fact test (§6.4) |
| `synapses`  | sigma (eq. 16) pairs, traces and top-k; concept-synapse search with Mann-Whitney U (§6.3)  |
| `graph`     | G_x = D_x E, G_y = D_y E: heavy tail, modularity vs random baselines, power laws, export    |
| `merge`     | `merge_models`: neuron concatenation of two models (§7.1); `merge_experiment`              |
| `report`    | `analyze`: all of the above into PNGs, report.json and a self-contained report.html        |

    from bdh import BDH
    from bdh.analysis import run_with_cache, analyze
    model = BDH.from_pretrained("runs/default")
    logits, cache = run_with_cache(model, ids, ["blocks.2.xy"], neurons=range(64))
    analyze(model, "report/")
"""

from .graph import analyze_block, graph_block, neuron_graph
from .merge import MergeError, merge_models, merge_pretrained
from .record import ActivationCache, hook_name, run_with_cache, run_with_hooks
from .report import analyze
from .sparsity import measure_activity, repeated_fact_experiment
from .synapses import (
    SigmaSpec, concept_synapse_search, rank_synapses, sigma_pairs, sigma_topk, sigma_trace, synapse_activations,
)

__all__ = [
    "ActivationCache", "MergeError", "SigmaSpec", "analyze", "analyze_block", "concept_synapse_search", "graph_block",
    "hook_name", "measure_activity", "merge_models", "merge_pretrained", "neuron_graph", "rank_synapses",
    "repeated_fact_experiment", "run_with_cache", "run_with_hooks", "sigma_pairs", "sigma_topk", "sigma_trace",
    "synapse_activations",
]
