"""BDH, the Dragon Hatchling (Kosowski et al., arXiv 2509.26507): BDH-GPU in PyTorch.

    from bdh import BDH, BDHConfig
    model = BDH(BDHConfig())
    logits, loss = model(idx, targets)             # parallel / chunked / recurrent: form="auto"
    logits, state = model.prefill(prompt_ids)      # explicit state
    logits, state = model.step(next_ids, state)    # O(1) per token

The GPT-2 baseline (`bdh.baselines.GPT`) has the same interface; `load_model(dir)` loads either.
"""

__version__ = "0.1.0"

from .checkpoint import CheckpointError
from .config import BDHConfig
from .generation import generate, stream
from .model import BDH
from .models import build_model, load_model
from .state import BDHState

__all__ = ["BDH", "BDHConfig", "BDHState", "CheckpointError", "build_model", "generate", "load_model", "stream",
           "__version__"]
