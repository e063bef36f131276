"""Pretraining: the data-parallel training loop, evaluation, checkpoints and devices.

Uses :mod:`bertpretrain.model` and :mod:`bertpretrain.data`'s batches; neither imports this package.
"""
from .checkpoint import latest_checkpoint
from .devices import default_devices, parse_devices
from .evaluate import evaluate_bert
from .config import TrainingConfig
from .history import HISTORY_KEYS, TrainingHistory
from .loop import NonFiniteLossError, train_bert
from .schedule import LearningRateSchedule

__all__ = ["HISTORY_KEYS", "LearningRateSchedule", "NonFiniteLossError", "TrainingConfig", "TrainingHistory",
           "default_devices", "evaluate_bert", "latest_checkpoint", "parse_devices", "train_bert"]
