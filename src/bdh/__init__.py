"""BDH, the Dragon Hatchling (Kosowski et al., arXiv 2509.26507): BDH-GPU in PyTorch.

    from bdh import BDH, BDHConfig
    model = BDH(BDHConfig())
    logits, loss = model(idx, targets)             # parallel / chunked / recurrent: form="auto"
    logits, state = model.prefill(prompt_ids)      # explicit state
    logits, state = model.step(next_ids, state)    # O(1) per token

Every model type implements `bdh.interface.LanguageModel` (BDH and the GPT-2 baseline `bdh.baselines.GPT` are
registered on import); `load_model(dir)` loads whichever a directory holds, `build_model(config)` builds one.
"""

from ._version import __version__
from .checkpoint import CheckpointError, load_model
from .config import BDHConfig
from .generation import generate, stream
from .interface import build_model
from .model import BDH
from .state import BDHState

from .baselines import gpt as _gpt  # noqa: E402, F401  (registers the builtin model type "gpt"; .model registers "bdh")
from . import tasks as _tasks  # noqa: E402, F401  (registers the data source of data.corpus = "task:REF")

__all__ = ["BDH", "BDHConfig", "BDHState", "CheckpointError", "build_model", "generate", "load_model", "stream",
           "__version__"]
