"""``mnistlit search``: hyperparameter search on Optuna, each trial a real ``fit`` in its own process."""
