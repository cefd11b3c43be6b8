"""The training engine: state, optimizers, jitted sharded steps, checkpoints, metrics, loop.

Entry point: ``train_and_evaluate(config, workdir) -> summary`` (see ``loop.py`` and
docs/training.md).
"""

from cnn_jax.train.loop import evaluate, preflight, resolve_config, train_and_evaluate, validate
from cnn_jax.train.state import TrainState

__all__ = ["TrainState", "evaluate", "preflight", "resolve_config", "train_and_evaluate", "validate"]
