"""A two-tower retrieval model in PyTorch, served with numpy.

* Item embedding (shared): the item's id embedding plus its category's embedding.
* Visitor tower: the embeddings of the visitor's recent items (up to ``history_len``, weighted by
  event type and recency exactly as the confidences are), mean-pooled, plus two history features
  (log distinct items, log total confidence), through a linear layer, L2-normalised.
* Item tower: the item embedding through a linear layer, L2-normalised.
* Training: next-event prediction over the training log with in-batch sampled softmax, each logit
  corrected by the log of the chance that the item is a candidate in a batch (the logQ
  correction of Yi et al. 2019, for deduplicated in-batch candidates) so that popular items are
  not over-penalised as negatives.

After fitting, the weights are copied to numpy: scoring needs no torch, so the API stays small.
Training uses the GPU when one is present.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sp

from retailrec.events import event_codes
from retailrec.models import torch_fit
from retailrec.models.base import BaseRecommender
from retailrec.models.data import Dataset
from retailrec.models.factors import best_of_catalogue

log = logging.getLogger(__name__)


def _history_features(n_items: np.ndarray, total_weight: np.ndarray) -> np.ndarray:
    return np.stack([np.log1p(n_items), np.log1p(total_weight)], axis=1).astype(np.float32)


#: Examples built at a time: the (rows, history_len) temporaries of one block, never of the log.
EXAMPLE_BLOCK = 131_072


def training_examples(
    data: Dataset, history_len: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Next-event examples: for each event with earlier events of the same visitor, its context.

    The context is weighed by the one confidence function (``data.config``'s event weights and
    half-life), as of the target event's time: exactly as serving weighs a history at the
    shop's clock. Built a block of :data:`EXAMPLE_BLOCK` examples at a time: on the full shop
    the whole log's float64 temporaries took over a gigabyte (docs/BENCHMARKS.md, "Whole
    pipeline").

    Returns:
        ``(context_items (N, L) int32 with -1 padding, context_weights (N, L) float32,
        features (N, 2), targets (N,))``, all item indices into the dataset's catalogue.
    """
    events = data.events
    order = np.lexsort((events["timestamp"].to_numpy(), events["user"].to_numpy()))  # stable
    user = events["user"].to_numpy()[order]
    item = events["item"].to_numpy()[order]
    ts = events["timestamp"].to_numpy()[order]
    codes = event_codes(events["event"])[order]
    del order
    start = np.r_[0, np.flatnonzero(user[1:] != user[:-1]) + 1]
    user_start = np.repeat(start, np.diff(np.r_[start, len(user)]))
    p = np.flatnonzero(np.arange(len(user)) > user_start)
    n = len(p)
    items = np.full((n, history_len), -1, dtype=np.int32)
    weights = np.zeros((n, history_len), dtype=np.float32)
    distinct, total = np.zeros(n, dtype=np.int64), np.zeros(n)
    lag = np.arange(1, history_len + 1)
    for a in range(0, n, EXAMPLE_BLOCK):
        q = p[a : a + EXAMPLE_BLOCK]
        idx = q[:, None] - lag[None, :]
        valid = idx >= user_start[q][:, None]
        idx_safe = np.where(valid, idx, 0)
        conf = np.where(
            valid, data.config.confidence(codes[idx_safe], ts[idx_safe], ts[q][:, None]), 0.0
        )
        block = np.where(valid, item[idx_safe], -1)
        items[a : a + len(q)] = block
        weights[a : a + len(q)] = conf
        distinct[a : a + len(q)] = _row_distinct(block)
        total[a : a + len(q)] = conf.sum(axis=1)
    return items, weights, _history_features(distinct, total), item[p]


def _row_distinct(items: np.ndarray) -> np.ndarray:
    """Distinct non-negative values per row."""
    s = np.sort(items, axis=1)
    new = np.ones_like(s, dtype=bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    counts: np.ndarray = (new & (s >= 0)).sum(axis=1)
    return counts


def pooled_context(item_table: Any, cat_table: Any, item_cat: Any, items: Any, weights: Any) -> Any:
    """The visitor tower's pooling: each row's items embedded (item plus category embedding)
    and summed with its weights normalised, as ``((item_table[items] +
    cat_table[item_cat[items]]) * w).sum(1)``; over the items only, with sparse gradients.

    Two thirds of the full shop's context slots are padding (weight 0): a bag neither reads them
    nor sends them a (zero) gradient row, a quarter of each fit's time (79 s to 63 s).
    """
    import torch
    from torch import nn

    w = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-9)
    real = weights > 0
    flat, counts = items[real].long(), real.sum(dim=1)
    offsets, flat_w = torch.cumsum(counts, 0) - counts, w[real]
    return sum(
        nn.functional.embedding_bag(
            idx, table, offsets, mode="sum", per_sample_weights=flat_w, sparse=True
        )
        for idx, table in ((flat, item_table), (item_cat[flat], cat_table))
    )


class TwoTowerRecommender(BaseRecommender):
    """Two-tower retrieval; see the module docstring.

    Args:
        dim: Embedding size of both towers.
        history_len: Recent events the visitor tower looks at.
        epochs, batch_size, lr: Training schedule (Adam).
        max_examples: Examples drawn per epoch at most (a time budget on large logs).
        temperature: Softmax temperature on cosine similarities.
        device: ``auto`` (GPU when present), ``cpu`` or ``cuda``.
    """

    name = "two_tower"

    def __init__(
        self,
        dim: int = 64,
        history_len: int = 20,
        epochs: int = 5,
        batch_size: int = 1024,
        lr: float = 0.005,
        temperature: float = 0.1,
        weight_decay: float = 1e-6,
        max_examples: int = 400_000,
        device: str = "auto",
        random_state: int = 0,
    ) -> None:
        super().__init__()
        self.dim, self.history_len, self.epochs = dim, history_len, epochs
        self.batch_size, self.lr, self.temperature = batch_size, lr, temperature
        self.weight_decay = weight_decay
        self.max_examples = max_examples
        self.device = device
        self.random_state = random_state
        self.item_factors_ = np.zeros((0, dim), dtype=np.float32)
        self.context_embedding_ = np.zeros((0, dim), dtype=np.float32)
        self.user_w_ = np.zeros((dim, dim + 2), dtype=np.float32)
        self.user_b_ = np.zeros(dim, dtype=np.float32)
        self.train_stats_: dict[str, float] = {}

    def _fit(self, data: Dataset) -> None:
        import torch
        from torch import nn

        torch.manual_seed(self.random_state)
        rng = np.random.default_rng(self.random_state)
        device = torch_fit.device(self.device)
        ctx_items, ctx_w, feats, targets = training_examples(data, self.history_len)
        n_items = data.n_items
        cats, cat_index = np.unique(data.item_category, return_inverse=True)
        # logQ correction with the probability that an item is among a batch's (deduplicated)
        # candidates: 1 - (1 - q)^B. For a large catalogue that is ~B*q (the usual log q up to a
        # constant); for a small one it saturates at 1, where subtracting log q would over-correct.
        q = np.bincount(targets, minlength=n_items).astype(np.float64) + 1.0
        q /= q.sum()
        p_batch = -np.expm1(self.batch_size * np.log1p(-q))
        log_q = torch.tensor(np.log(p_batch), dtype=torch.float32, device=device)

        class Towers(nn.Module):  # type: ignore[misc]
            def __init__(self, dim: int) -> None:
                super().__init__()
                # Sparse gradients: a step touches the rows of its batch, not all 365k items.
                self.item = nn.Embedding(n_items, dim, sparse=True)
                self.cat = nn.Embedding(len(cats), dim, sparse=True)
                self.user_proj = nn.Linear(dim + 2, dim)
                self.item_proj = nn.Linear(dim, dim)
                for emb in (self.item, self.cat):
                    nn.init.normal_(emb.weight, std=0.05)

            def embed(self, idx: Any) -> Any:
                # Shared by both towers: what a visitor looked at and what is recommended live in
                # one space, so items of a category learn from each other's interactions.
                return self.item(idx) + self.cat(cat_t[idx])

            def users(self, items: Any, weights: Any, f: Any) -> Any:
                pooled = pooled_context(self.item.weight, self.cat.weight, cat_t, items, weights)
                return nn.functional.normalize(self.user_proj(torch.cat([pooled, f], dim=1)), dim=1)

            def items(self, idx: Any) -> Any:
                return nn.functional.normalize(self.item_proj(self.embed(idx)), dim=1)

        cat_t = torch.tensor(cat_index, dtype=torch.long, device=device)
        model = Towers(self.dim).to(device)
        # int32 indices (embeddings take them): padding has weight 0. No copies of the arrays.
        ctx_t = torch.from_numpy(np.maximum(ctx_items, 0, out=ctx_items))
        w_t = torch.from_numpy(ctx_w)
        f_t = torch.from_numpy(feats)
        y_t = torch.tensor(targets, dtype=torch.long)
        n = len(targets)
        trainer = torch_fit.Trainer(model, ("item.", "cat."), self.lr, self.weight_decay)
        model.train()
        for batch in trainer.batches(rng, n, self.epochs, self.max_examples, self.batch_size):
            y = y_t[batch].to(device)
            u = model.users(ctx_t[batch].to(device), w_t[batch].to(device), f_t[batch].to(device))
            v = model.items(y)
            logits = u @ v.T / self.temperature - log_q[y][None, :]
            # The same item twice in a batch is not a negative for itself.
            same = (y[:, None] == y[None, :]) & ~torch.eye(len(y), dtype=torch.bool, device=device)
            logits = logits.masked_fill(same, float("-inf"))
            trainer.step(
                nn.functional.cross_entropy(logits, torch.arange(len(y), device=device)), len(y)
            )
        self.train_stats_ = trainer.stats(n, device)
        log.info(
            "two-tower: %d examples x %d epochs in %.1fs on %s",
            n,
            self.epochs,
            self.train_stats_["seconds"],
            device,
        )
        del ctx_t, w_t, f_t, y_t, ctx_items, ctx_w, feats, targets
        model.eval()
        self.item_factors_ = np.empty((n_items, self.dim), dtype=np.float32)
        self.context_embedding_ = np.empty((n_items, self.dim), dtype=np.float32)
        with torch.no_grad():  # a block of items at a time: no catalogue-sized temporaries
            for a in range(0, n_items, EXAMPLE_BLOCK):
                block = torch.arange(a, min(a + EXAMPLE_BLOCK, n_items), device=device)
                self.item_factors_[a : a + len(block)] = model.items(block).cpu().numpy()
                self.context_embedding_[a : a + len(block)] = model.embed(block).cpu().numpy()
            self.user_w_ = model.user_proj.weight.cpu().numpy().astype(np.float32)
            self.user_b_ = model.user_proj.bias.cpu().numpy().astype(np.float32)

    def user_vectors(self, user_items: sp.csr_matrix) -> np.ndarray:
        """The visitor tower in numpy, on each row's ``history_len`` highest-confidence items."""
        rows = sp.csr_matrix(user_items, dtype=np.float32)
        n_rows = rows.shape[0]
        pooled = np.zeros((n_rows, self.dim), dtype=np.float32)
        n_distinct = np.diff(rows.indptr)
        total = np.asarray(rows.sum(axis=1)).ravel()
        for r in range(n_rows):
            lo, hi = rows.indptr[r], rows.indptr[r + 1]
            if hi == lo:
                continue
            idx, w = rows.indices[lo:hi], rows.data[lo:hi]
            if len(idx) > self.history_len:
                keep = np.argpartition(-w, self.history_len - 1)[: self.history_len]
                idx, w = idx[keep], w[keep]
            pooled[r] = (w / max(w.sum(), 1e-9)) @ self.context_embedding_[idx]
        x = np.concatenate([pooled, _history_features(n_distinct, total)], axis=1)
        u: np.ndarray = x @ self.user_w_.T + self.user_b_
        normalised: np.ndarray = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-9)
        return normalised

    def score(self, user_items: sp.csr_matrix) -> np.ndarray:
        return np.asarray(self.user_vectors(user_items) @ self.item_factors_.T, dtype=np.float32)

    def prepare_serving(self) -> None:
        super().prepare_serving()
        self._serving("tie_break")

    def _candidate_scores(
        self, row: sp.csr_matrix, n: int, blocked: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Every item's score, one product (unit-length item vectors bound nothing), and the top
        ``n`` unblocked without :meth:`recommend`'s set-up: half the time of an answer."""
        u = self.user_vectors(row)[0]
        if not u.any():
            return None  # the popular items, as recommend() gives them
        return best_of_catalogue(self.item_factors_, u, self._serving("tie_break"), blocked, n)
