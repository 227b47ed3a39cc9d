"""Training BDH: the run config, the training loop, evaluation, checkpoints with exact resume.

    from bdh.training import load_run_config, train
    result = train(load_run_config("tiny", ["train.steps=100"]), "runs/tiny")
"""

from .config import DataConfig, RunConfig, TrainConfig, load_run_config
from .evaluation import evaluate, token_byte_lengths
from .trainer import TrainingDiverged, TrainResult, train

__all__ = [
    "DataConfig",
    "RunConfig",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "evaluate",
    "load_run_config",
    "token_byte_lengths",
    "train",
]
