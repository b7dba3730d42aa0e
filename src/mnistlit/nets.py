"""Where the networks lived before 0.2: checkpoints written then name ``mnistlit.nets.X`` in their
hyperparameters, and ``load_from_checkpoint`` imports that name. New code: ``mnistlit.core.nets``."""

from mnistlit.core.nets import Net, SpeedrunNet, StrongNet

__all__ = ["Net", "SpeedrunNet", "StrongNet"]
