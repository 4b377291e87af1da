"""Matrix factorisation from implicit: ALS and BPR, scored by folding a history in.

A visitor's vector is recomputed from the history at scoring time: exactly for ALS (implicit's
``recalculate_user``, the least-squares solve ALS itself does), and for BPR as the
confidence-weighted mean of the history's item vectors. Fresh events therefore count at once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from retailrec.models.base import BaseRecommender
from retailrec.models.data import Dataset


class FactorRecommender(BaseRecommender):
    """Scores ``user_vectors(history) @ item_factors.T``."""

    def __init__(self) -> None:
        super().__init__()
        self.item_factors_ = np.zeros((0, 0), dtype=np.float32)

    def user_vectors(self, user_items: sp.csr_matrix) -> np.ndarray:
        raise NotImplementedError

    def score(self, user_items: sp.csr_matrix) -> np.ndarray:
        return np.asarray(self.user_vectors(user_items) @ self.item_factors_.T, dtype=np.float32)


class ALSRecommender(FactorRecommender):
    """implicit's Alternating Least Squares (Hu, Koren and Volinsky 2008)."""

    name = "als"

    def __init__(
        self,
        factors: int = 64,
        regularization: float = 0.05,
        alpha: float = 2.0,
        iterations: int = 15,
        random_state: int = 0,
    ) -> None:
        super().__init__()
        self.factors, self.regularization, self.alpha = factors, regularization, alpha
        self.iterations, self.random_state = iterations, random_state
        self.model_: Any = None

    def params(self) -> dict[str, Any]:
        return {
            "factors": self.factors,
            "regularization": self.regularization,
            "alpha": self.alpha,
            "iterations": self.iterations,
        }

    def _fit(self, data: Dataset) -> None:
        from implicit.cpu.als import AlternatingLeastSquares

        # implicit checks the BLAS thread count when the model is built: limit it first.
        with threadpool_limits(limits=1, user_api="blas"):
            self.model_ = AlternatingLeastSquares(
                factors=self.factors,
                regularization=self.regularization,
                alpha=self.alpha,
                iterations=self.iterations,
                random_state=self.random_state,
                num_threads=0,
            )
            self.model_.fit(data.matrix, show_progress=False)
        self.item_factors_ = np.asarray(self.model_.item_factors, dtype=np.float32)

    def user_vectors(self, user_items: sp.csr_matrix) -> np.ndarray:
        rows = sp.csr_matrix(user_items, dtype=np.float32)
        with threadpool_limits(limits=1, user_api="blas"):
            vectors = self.model_.recalculate_user(np.arange(rows.shape[0]), rows)
        return np.atleast_2d(np.asarray(vectors, dtype=np.float32))


class BPRRecommender(FactorRecommender):
    """implicit's Bayesian Personalised Ranking (Rendle et al. 2009)."""

    name = "bpr"

    def __init__(
        self,
        factors: int = 64,
        learning_rate: float = 0.05,
        regularization: float = 0.01,
        iterations: int = 50,
        random_state: int = 0,
    ) -> None:
        super().__init__()
        self.factors, self.learning_rate, self.regularization = (
            factors,
            learning_rate,
            regularization,
        )
        self.iterations, self.random_state = iterations, random_state

    def params(self) -> dict[str, Any]:
        return {
            "factors": self.factors,
            "learning_rate": self.learning_rate,
            "regularization": self.regularization,
            "iterations": self.iterations,
        }

    def _fit(self, data: Dataset) -> None:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        with threadpool_limits(limits=1, user_api="blas"):
            model = BayesianPersonalizedRanking(
                factors=self.factors,
                learning_rate=self.learning_rate,
                regularization=self.regularization,
                iterations=self.iterations,
                random_state=self.random_state,
                num_threads=0,
            )
            model.fit(data.matrix, show_progress=False)
        # implicit keeps the item bias as the last factor, with a constant 1 on the user side.
        self.item_factors_ = np.asarray(model.item_factors, dtype=np.float32)

    def user_vectors(self, user_items: sp.csr_matrix) -> np.ndarray:
        rows = sp.csr_matrix(user_items, dtype=np.float32)
        weights = rows.multiply(1.0 / np.maximum(rows.sum(axis=1), 1e-9)).tocsr()
        vectors = np.asarray(weights @ self.item_factors_, dtype=np.float32)
        vectors[:, -1] = 1.0
        return vectors
