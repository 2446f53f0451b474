"""Distributed training: Ray Train's TorchTrainer, DeepSpeed ZeRO inside every worker."""

from .trainer import TrainingError, export_checkpoint, fit

__all__ = ["TrainingError", "export_checkpoint", "fit"]
