"""Hugging Face integration: our models as transformers `AutoModelForCausalLM`s, and lm-evaluation-harness.

    import bdh.hf                                           # registers the Auto classes (needs transformers)
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
    model = AutoModelForCausalLM.from_pretrained("runs/default")     # a `bdh train` / save_pretrained directory
    out = model.generate(ids, max_new_tokens=50)            # greedy, sampling, beam search; BDHCache carries rho
    pipe = pipeline("text-generation", model="runs/default")

`import bdh.hf` registers, for every registered model type ("bdh", "gpt", and any registered later; the classes
are made per type by `bdh.hf.modeling.hf_classes`): the configs with `AutoConfig`, the causal LMs
with `AutoModelForCausalLM` and `BDHTokenizerFast` (our bytes / BPE / GPT-2 tokenizers as a
`PreTrainedTokenizerFast`) with `AutoTokenizer`. The HF model wraps our module (`model.model`, the same module
and weights; no second copy of the maths). Directories also carry `auto_map` and a `modeling_bdh.py` that
re-exports these classes, so `trust_remote_code=True` loads them without importing `bdh.hf` first (the code
still comes from the installed `bdh` package).

lm-evaluation-harness: `bdh.hf.lm_eval` registers the model "bdh"; `python -m bdh.hf.lm_eval --model bdh
--model_args pretrained=DIR --tasks ...` is lm_eval's own command line with that model registered.
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("transformers") is None:  # a one-line reason; bdh itself works without it
    raise ModuleNotFoundError('bdh.hf needs transformers: pip install -e ".[hf]"', name="bdh.hf")

from .modeling import (  # noqa: E402
    BDHCache,
    BDHConfigHF,
    BDHForCausalLM,
    BDHTokenizerFast,
    GPTConfigHF,
    GPTForCausalLM,
    hf_classes,
    hf_config,
    register,
    wrap,
)

register()

__all__ = ["BDHCache", "BDHConfigHF", "BDHForCausalLM", "BDHTokenizerFast", "GPTConfigHF", "GPTForCausalLM",
           "hf_classes", "hf_config", "register", "wrap"]
