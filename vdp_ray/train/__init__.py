"""Distributed training: Ray Train's TorchTrainer, DeepSpeed ZeRO inside every worker.

``trainer`` is the driver (a TorchTrainer per stage, the config resolved once), ``loop`` the worker loop,
``stages`` what each stage optimises (the registry ``train.stages`` names), ``checkpoint`` the checkpoint format
and exports from it, ``engine`` the DeepSpeed config and per-stage settings, ``collectives`` / ``runlog`` /
``faults`` / ``ema`` / ``latent_cache`` the pieces the loop sequences.
"""

from .checkpoint import CheckpointError, export_checkpoint
from .trainer import TrainingError, fit

__all__ = ["CheckpointError", "TrainingError", "export_checkpoint", "fit"]
