"""EASE (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data"): an item x item
weight matrix in closed form,

    P = (X'X + lambda I)^-1,    B = I - P diag(1 / diag(P)),    diag(B) = 0,

where ``X`` is the visitor x item confidence matrix (the one every model trains on). A history
``h`` scores ``h B``, so it is served like any item-to-item model.

The dense inverse costs ``max_items``^2 floats and ``max_items``^3 operations, so the exact
solution is kept for the ``max_items`` items with the most visitors (4,096 by default: 128 MiB
for the float64 Gram matrix and as much for its factor while solving; about 3 s on one core; the
bound scales as the square and the cube; docs/BENCHMARKS.md). Items outside that head (on the
full synthetic shop, 227,000 of 231,000 items and about 69% of the events) are covered by BM25
item-kNN: every pair with a tail item takes its BM25 weight, each BM25 row divided by its largest
weight and multiplied by the median of the head rows' largest EASE weights. Within the head,
each item keeps its ``k`` largest weights, so the served matrix is sparse.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits

from retailrec.errors import BundleError
from retailrec.models.data import Dataset
from retailrec.models.item_item import ItemItemRecommender, knn_similarity

#: Visitors whose rows are multiplied at once when the Gram matrix is accumulated.
GRAM_BLOCK_ROWS = 200_000
#: Rows of the dense matrices handled at a time when solving (bounds the temporary arrays).
BLOCK = 512


class EASERecommender(ItemItemRecommender):
    """EASE on the most active items, BM25 item-kNN on the rest (see the module docstring).

    Args:
        lam: The L2 penalty ``lambda``; training chooses it on the validation window
            (``retailrec.training.train.tune_ease``) unless given.
        max_items: The head that gets the exact solution (memory: ``16 * max_items**2`` bytes
            while fitting).
        k: Weights kept per item (EASE in the head, BM25 neighbours for the tail).
    """

    name = "ease"

    def __init__(self, lam: float = 200.0, max_items: int = 4096, k: int = 100) -> None:
        super().__init__()
        self.lam, self.max_items, self.k = lam, max_items, k
        self.head_ = np.zeros(0, dtype=np.int64)
        #: Training only (never bundled): the head's Gram matrix and the tail's BM25 weights.
        self._gram: np.ndarray | None = None
        self._tail: sp.csr_matrix | None = None

    def _fit(self, data: Dataset) -> None:
        x = sp.csr_matrix(data.matrix, dtype=np.float32)
        visitors = np.bincount(x.indices, minlength=x.shape[1])  # rows hold an item once
        ranked = np.argsort(-visitors, kind="stable")
        self.head_ = np.sort(ranked[: min(self.max_items, int((visitors > 0).sum()))])
        self._gram = _gram(x[:, self.head_])
        self._tail = self._bm25_tail(data) if len(self.head_) < data.n_items else None
        self.with_lambda(self.lam)

    def fit(self, data: Dataset) -> EASERecommender:
        super().fit(data)
        return self

    def lambda_scale(self) -> float:
        """The Gram matrix's mean diagonal (the average head item's total squared confidence):
        the scale of a useful lambda, whatever the log's confidences (1 when the head is
        empty)."""
        if self._gram is None:
            raise BundleError("EASE's Gram matrix is gone after saving: refit it")
        return float(np.mean(np.diag(self._gram))) if len(self._gram) else 1.0

    def with_lambda(self, lam: float) -> EASERecommender:
        """Solve for ``lam`` on the Gram matrix already built (what tuning calls); the served
        matrix is replaced."""
        if self._gram is None:
            raise BundleError("EASE's Gram matrix is gone after saving: refit it")
        self.lam = float(lam)
        b = _ease_weights(self._gram, self.lam)
        rows, cols = _top_k(b, self.k)
        n = self.n_items_
        sim = sp.csr_matrix(
            (b[rows, cols], (self.head_[rows], self.head_[cols])), shape=(n, n), dtype=np.float32
        )
        if self._tail is not None and sim.nnz:
            scale = float(np.median(np.asarray(sim.max(axis=1).todense()).ravel()[self.head_]))
            sim = sim + scale * self._tail
        self.similarity_ = sp.csr_matrix(sim, dtype=np.float32)
        self.similarity_.eliminate_zeros()
        self.__dict__.pop("_serving_cache", None)
        return self

    def _bm25_tail(self, data: Dataset) -> sp.csr_matrix:
        """BM25 neighbours of every pair that has a tail item, each row scaled to a largest
        weight of 1."""
        bm25 = knn_similarity(data.matrix, self.k)  # no self-pairs, in the row maxima either
        # Filtered on the CSR arrays, never converted: a copy is the size of the served matrix.
        rows = np.repeat(np.arange(bm25.shape[0], dtype=np.int32), np.diff(bm25.indptr))
        top = np.asarray(bm25.max(axis=1).todense(), dtype=np.float32).ravel()
        in_head = np.zeros(data.n_items, dtype=bool)
        in_head[self.head_] = True
        keep = (bm25.data > 0) & ~(in_head[rows] & in_head[bm25.indices])  # a tail item in it
        kept_rows = rows[keep]
        del rows
        indptr = np.zeros(bm25.shape[0] + 1, dtype=np.int64)
        np.cumsum(np.bincount(kept_rows, minlength=bm25.shape[0]), out=indptr[1:])
        return sp.csr_matrix(
            (bm25.data[keep] / top[kept_rows], bm25.indices[keep], indptr), shape=bm25.shape
        )

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_gram"] = state["_tail"] = None  # for tuning only, never in a bundle
        return state


def _top_k(weights: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of each row's ``k`` largest weights (all of a shorter row), less
    the zeros (the diagonal); a block of rows at a time, so the index arrays stay small."""
    m, n = weights.shape
    k = min(k, n)
    rows, cols = [], []
    for start in range(0, m, BLOCK):
        block = weights[start : start + BLOCK]
        top = np.argpartition(-block, k - 1, axis=1)[:, :k] if k < n else None
        if top is None:
            top = np.broadcast_to(np.arange(n), block.shape)
        r = np.repeat(np.arange(start, start + len(block)), top.shape[1])
        c = top.ravel()
        keep = weights[r, c] != 0
        rows.append(r[keep])
        cols.append(c[keep])
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(rows), np.concatenate(cols)


def _gram(x: sp.csr_matrix) -> np.ndarray:
    """``x' x`` as a dense float64 matrix, accumulated over blocks of rows (the sparse product of
    the whole matrix can hold far more pairs than the dense result has cells)."""
    gram = np.zeros((x.shape[1], x.shape[1]), dtype=np.float64)
    for start in range(0, x.shape[0], GRAM_BLOCK_ROWS):
        block = x[start : start + GRAM_BLOCK_ROWS]
        gram += (block.T @ block).toarray()
    return gram


def _ease_weights(gram: np.ndarray, lam: float) -> np.ndarray:
    """EASE's ``B`` for ``lam``: ``P = (G + lam I)^-1`` by Cholesky (G is positive
    semi-definite, so ``G + lam I`` is definite for ``lam > 0``), ``B = -P / diag(P)`` by column,
    zero diagonal. float32."""
    m = gram.shape[0]
    if m == 0:
        return np.zeros((0, 0), dtype=np.float32)
    g = gram + lam * np.eye(m)  # the one copy of the Gram matrix: factored and inverted in place
    with threadpool_limits(limits=1, user_api="blas"):
        c, info = lapack.dpotrf(g, lower=False, overwrite_a=True)
        if info != 0:
            raise np.linalg.LinAlgError(f"EASE: the Gram matrix plus {lam} I is not definite")
        p, info = lapack.dpotri(c, lower=False, overwrite_c=True)
    # potri fills the upper triangle only; B = -P / diag(P) by column, a block of rows at a time.
    upper = np.triu_indices(BLOCK, 1)
    diag = np.diag(p).copy()
    b = np.empty((m, m), dtype=np.float32)
    for start in range(0, m, BLOCK):
        end = min(start + BLOCK, m)
        rows = p[start:end]
        rows[:, :start] = p[:start, start:end].T  # below the diagonal block, from above it
        square = rows[:, start:end]
        n = end - start
        lower = (upper[1][upper[1] < n], upper[0][upper[1] < n])
        square[lower] = square.T[lower]  # inside the diagonal block
        b[start:end] = -rows / diag[None, :]
    np.fill_diagonal(b, 0.0)
    return b
