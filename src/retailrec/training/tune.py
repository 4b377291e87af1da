"""Hyper-parameter search with Optuna, on the validation window only."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

SPACES: dict[str, Callable[[Any], dict[str, Any]]] = {
    "als": lambda t: {
        "factors": t.suggest_categorical("factors", [32, 64, 128]),
        "regularization": t.suggest_float("regularization", 1e-3, 1.0, log=True),
        "alpha": t.suggest_float("alpha", 0.5, 40.0, log=True),
        "iterations": t.suggest_int("iterations", 5, 25),
    },
    "bpr": lambda t: {
        "factors": t.suggest_categorical("factors", [32, 64, 128]),
        "learning_rate": t.suggest_float("learning_rate", 1e-3, 0.1, log=True),
        "regularization": t.suggest_float("regularization", 1e-4, 0.1, log=True),
        "iterations": t.suggest_int("iterations", 20, 200),
    },
    "itemknn_bm25": lambda t: {
        "k": t.suggest_int("k", 10, 400, log=True),
        "k1": t.suggest_float("k1", 0.5, 3.0),
        "b": t.suggest_float("b", 0.1, 1.0),
    },
    "itemknn_cosine": lambda t: {"k": t.suggest_int("k", 10, 400, log=True)},
    "ease": lambda t: {"lam": t.suggest_float("lam", 1.0, 1e5, log=True)},
    "two_tower": lambda t: {
        "dim": t.suggest_categorical("dim", [32, 64]),
        "lr": t.suggest_float("lr", 1e-3, 2e-2, log=True),
        "temperature": t.suggest_float("temperature", 0.05, 0.3, log=True),
        "epochs": t.suggest_int("epochs", 2, 6),
    },
}


def tune(
    name: str, objective: Callable[[dict[str, Any]], float], trials: int, seed: int = 0
) -> dict[str, Any]:
    """The best params for ``name`` after ``trials`` calls of ``objective``, which fits the model
    with the params it is given and scores it on the validation window (higher is better)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(lambda trial: objective(SPACES[name](trial)), n_trials=trials)
    log.info("tuned %s: %s -> %.4f", name, study.best_params, study.best_value)
    return dict(study.best_params)
