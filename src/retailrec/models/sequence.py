"""A sequential session model in the style of GRU4Rec (Hidasi et al. 2016), trained in PyTorch
and served with numpy.

* A session is its distinct items in the order of their latest view: a repeat moves the item to
  the end (:func:`session_sequences`). The last ``max_len`` of them are encoded.
* Encoder: item embeddings -> one GRU layer -> a linear layer; the session's vector is the
  output after its latest item.
* An item's score is the session vector's dot product with the item's embedding (tied with the
  input embedding) plus the item's bias.
* Training: next-item prediction within the sessions of the training log, on the targets that
  the session-rec protocol scores (an item new to the session). The loss is a sampled softmax
  over the batch's targets and ``n_negatives`` items drawn uniformly, each logit corrected by
  the log of its chance to be a candidate (Yi et al. 2019), so popular items are not
  over-penalised as negatives.

Serving reads a session as a history row whose weights halve with each step back
(:meth:`SequenceRecommender.sequence_row`): the order is read back from the weights, exactly. An
item's score is the session vector's product with its ``[embedding, bias]``. The model reads only
the ``max_vocab`` items most often in its training sessions (its vocabulary; other items of a
session are left out) and recommends only the ``max_items`` most often a next item there; every
other item scores below those, so serving scores only them. After fitting, the weights are
copied to numpy: scoring needs no torch. Training uses the GPU when one is present.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sp

from retailrec.models import torch_fit
from retailrec.models.base import TIE_BREAK, BaseRecommender
from retailrec.models.data import Dataset

log = logging.getLogger(__name__)


def session_sequences(groups: np.ndarray, items: np.ndarray) -> list[np.ndarray]:
    """Each session's steps as the session model sees them.

    Args:
        groups: (n_events,) session keys, each session's events together and in time order.
        items: (n_events,) item indices.

    Returns:
        One int64 array per session with at least two distinct items: its items in viewing
        order, consecutive repeats collapsed.
    """
    if not len(items):
        return []
    keep = np.r_[True, (groups[1:] != groups[:-1]) | (items[1:] != items[:-1])]
    groups, items = groups[keep], items[keep]
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    lengths = np.diff(np.r_[starts, len(groups)])
    return [items[s : s + n] for s, n in zip(starts, lengths, strict=True) if n >= 2]


def latest_order(items: np.ndarray) -> np.ndarray:
    """Distinct ``items`` in the order of their latest occurrence (negative entries dropped)."""
    items = np.asarray(items, dtype=np.int64)
    items = items[items >= 0]
    rev = items[::-1]
    _, first = np.unique(rev, return_index=True)  # first in reverse = latest occurrence
    out: np.ndarray = rev[np.sort(first)][::-1]
    return out


def training_examples(sequences: list[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Next-item examples: for each step of each session whose item is new to the session, the
    session so far (:func:`latest_order`, its last ``max_len``) and that item.

    Returns:
        ``(prefixes (N, max_len) of item indices, left-padded with -1, targets (N,))``.
    """
    prefixes: list[np.ndarray] = []
    targets: list[int] = []
    for seq in sequences:
        order: list[int] = []
        for i, item in enumerate(seq.tolist()):
            if i and item not in order:
                prefixes.append(np.asarray(order[-max_len:], dtype=np.int64))
                targets.append(item)
            if item in order:
                order.remove(item)
            order.append(item)
    out = np.full((len(prefixes), max_len), -1, dtype=np.int64)
    for r, p in enumerate(prefixes):
        out[r, max_len - len(p) :] = p
    return out, np.asarray(targets, dtype=np.int64)


def items_first(prefixes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prefixes (-1: padding) with each row's items moved ahead of its padding, and
    each row's number of items."""
    width = prefixes.shape[1]
    lengths = (prefixes >= 0).sum(axis=1)
    shift = (np.arange(width)[None, :] + (width - lengths)[:, None]) % width
    return np.take_along_axis(prefixes, shift, axis=1), lengths


def gru_last_states(gru: Any, embed: Any, x: Any, lengths: Any, pad: int) -> Any:
    """The ``gru``'s state after each row's last item, as over the row left-padded (what serving
    encodes, :meth:`SequenceRecommender.encode`), computed over the items only.

    Args:
        x: (R, L) item positions, each row's ``lengths`` items first (:func:`items_first`),
            any padding after them.
        lengths: (R,) int64 on the CPU, at least 1.
        pad: The padding's position in ``embed``.

    A row's padding steps reach the same states whatever the row: each row starts from the state
    after its own number of them. A training prefix holds 1.9 items on average on the full shop,
    not the 10 of ``max_len``: a third less time per fit.
    """
    import torch
    from torch import nn

    steps = x.shape[1]
    pads, _ = gru(embed(torch.full((1, steps), pad, dtype=torch.long, device=x.device)))
    states = torch.cat([pads.new_zeros(1, 1, pads.shape[2]), pads], dim=1)[0]  # 0..steps pads
    packed = nn.utils.rnn.pack_padded_sequence(
        embed(x), lengths, batch_first=True, enforce_sorted=False
    )
    _, last = gru(packed, states[steps - lengths.to(x.device)][None])
    return last[0]


#: The score of an item the model does not recommend: below every item it does.
UNTRAINED = -1e4


def _lookup(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(positions, found)``: where each of ``ids`` sits in ``sorted_ids`` (any shape), and
    whether it is there at all."""
    ids = np.asarray(ids, dtype=np.int64)
    if not len(sorted_ids):
        return np.zeros(ids.shape, dtype=np.int64), np.zeros(ids.shape, dtype=bool)
    at = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return at, sorted_ids[at] == ids


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow warnings
    return out


class SequenceRecommender(BaseRecommender):
    """GRU4Rec-style next-item model; see the module docstring.

    Args:
        dim: Embedding and GRU state size.
        max_len: The latest distinct items of a session that are encoded.
        epochs, batch_size, lr: Training schedule (Adam).
        n_negatives: Items drawn uniformly per batch as extra negatives.
        max_examples: Examples drawn per epoch at most (a time budget on large logs).
        max_items: The items it recommends at most: those most often a next item in training
            (the rest learned too little; the session model covers them). Bounds serving's
            work and the model's size on a large catalogue.
        max_vocab: The items it reads at most: those most often in training sessions; any
            other item in a session is left out, in training and in serving. Bounds the
            model's size (``max_vocab * dim`` floats) on a large catalogue.
        device: ``auto`` (GPU when present), ``cpu`` or ``cuda``.
    """

    name = "sequence"

    def __init__(
        self,
        dim: int = 128,
        max_len: int = 10,
        epochs: int = 4,
        batch_size: int = 512,
        lr: float = 0.004,
        n_negatives: int = 1024,
        max_examples: int = 100_000,
        max_items: int = 30_000,
        max_vocab: int = 50_000,
        device: str = "auto",
        random_state: int = 0,
    ) -> None:
        super().__init__()
        self.dim, self.max_len, self.epochs = dim, max_len, epochs
        self.batch_size, self.lr, self.n_negatives = batch_size, lr, n_negatives
        self.max_examples, self.max_items, self.max_vocab = max_examples, max_items, max_vocab
        self.device = device
        self.random_state = random_state
        #: (V,) sorted: the items it reads (:attr:`max_vocab` at most); others are left out.
        self.vocab_ = np.zeros(0, dtype=np.int64)
        #: (V + 1, dim) their input embeddings; the last row is the padding (zeros).
        self.embedding_ = np.zeros((1, dim), dtype=np.float32)
        self.gru_ = {
            name: np.zeros(0, dtype=np.float32) for name in ("w_ih", "w_hh", "b_ih", "b_hh")
        }
        self.out_w_ = np.zeros((dim, dim), dtype=np.float32)
        self.out_b_ = np.zeros(dim, dtype=np.float32)
        #: (H,) the items it recommends (:attr:`max_items` at most), and their
        #: ``[embedding, bias]`` (H, dim + 1); every other item scores :data:`UNTRAINED`.
        self.head_ = np.zeros(0, dtype=np.int64)
        self.head_factors_ = np.zeros((0, dim + 1), dtype=np.float32)
        self.train_stats_: dict[str, float] = {}

    # -- fitting ------------------------------------------------------------------------------

    def _fit(self, data: Dataset) -> None:
        import torch
        from torch import nn

        self.__dict__.pop("_serving_cache", None)  # what serving derived from earlier weights
        torch.manual_seed(self.random_state)
        rng = np.random.default_rng(self.random_state)
        device = torch_fit.device(self.device)
        ev = data.events.sort_values(["user", "session", "timestamp"], kind="stable")
        groups = ev["user"].to_numpy(np.int64) * 100_000 + ev["session"].to_numpy(np.int64)
        sequences = session_sequences(groups, ev["item"].to_numpy(np.int64))
        # The vocabulary: the items most often in training sessions (ties: the lower index).
        every = np.concatenate(sequences) if sequences else np.zeros(0, dtype=np.int64)
        seen, times = np.unique(every, return_counts=True)
        self.vocab_ = np.sort(seen[np.argsort(-times, kind="stable")[: self.max_vocab]])
        n_vocab = pad = len(self.vocab_)  # positions in the vocabulary; the padding is last
        # Each session's items in the vocabulary (the others left out), found for all at once.
        at, known = _lookup(self.vocab_, every)
        owner = np.repeat(np.arange(len(sequences)), [len(seq) for seq in sequences])
        kept = np.bincount(owner[known], minlength=len(sequences))
        prefixes, targets = training_examples(
            np.split(at[known], np.cumsum(kept)[:-1]) if sequences else [], self.max_len
        )
        n_neg = min(self.n_negatives, max(n_vocab, 1))
        # logQ: the chance that an item is among a batch's candidates, its targets (by their
        # frequency) or the uniform draws.
        counts = np.bincount(targets, minlength=n_vocab)
        q = (counts.astype(np.float64) + 1.0) / (len(targets) + n_vocab)
        p_cand = -np.expm1(self.batch_size * np.log1p(-q)) + n_neg / max(n_vocab, 1)
        log_q = torch.tensor(np.log(np.minimum(p_cand, 1.0)), dtype=torch.float32, device=device)

        class Net(nn.Module):  # type: ignore[misc]
            def __init__(self, dim: int) -> None:
                super().__init__()
                self.item = nn.Embedding(n_vocab + 1, dim, padding_idx=pad, sparse=True)
                self.bias = nn.Embedding(max(n_vocab, 1), 1, sparse=True)
                self.gru = nn.GRU(dim, dim, batch_first=True)
                self.out = nn.Linear(dim, dim)
                nn.init.normal_(self.item.weight, std=0.05)
                nn.init.zeros_(self.bias.weight)
                with torch.no_grad():
                    self.item.weight[pad].zero_()

            def encode(self, x: Any, lengths: Any) -> Any:
                return self.out(gru_last_states(self.gru, self.item, x, lengths, pad))

        model = Net(self.dim).to(device)
        ahead, lengths = items_first(prefixes)  # the GRU then runs over items only
        x_t = torch.tensor(np.where(ahead >= 0, ahead, pad), dtype=torch.long)
        len_t = torch.tensor(lengths, dtype=torch.long)
        y_t = torch.tensor(targets, dtype=torch.long)
        n = len(targets)
        trainer = torch_fit.Trainer(model, ("item.", "bias."), self.lr)
        model.train()
        for batch in trainer.batches(rng, n, self.epochs, self.max_examples, self.batch_size):
            y = y_t[batch].to(device)
            u = model.encode(x_t[batch].to(device), len_t[batch])
            neg = torch.from_numpy(rng.integers(0, n_vocab, n_neg)).to(device)
            cand = torch.cat([y, neg])
            logits = u @ model.item(cand).T + model.bias(cand).T - log_q[cand][None, :]
            # A candidate that is the example's own target is not a negative for it.
            same = y[:, None] == cand[None, :]
            same[:, : len(y)] &= ~torch.eye(len(y), dtype=torch.bool, device=device)
            logits = logits.masked_fill(same, float("-inf"))
            trainer.step(
                nn.functional.cross_entropy(logits, torch.arange(len(y), device=device)), len(y)
            )
        # The items it recommends: those most often a next item (ties: the lower index).
        ranked = np.argsort(-counts, kind="stable")
        head = np.sort(ranked[: self.max_items][counts[ranked[: self.max_items]] > 0])
        self.train_stats_ = {
            **trainer.stats(n, device),
            "vocabulary": float(n_vocab),
            "recommended_items": float(len(head)),
        }
        log.info("sequence: %d examples, %d steps on %s", n, trainer.steps, device)
        model.eval()
        with torch.no_grad():
            emb = model.item.weight.detach().cpu().numpy().astype(np.float32)
            bias = model.bias.weight.detach().cpu().numpy().astype(np.float32)
            self.embedding_ = emb
            self.head_ = self.vocab_[head].astype(np.int64)
            self.head_factors_ = np.ascontiguousarray(
                np.concatenate([emb[head], bias[head]], axis=1)
            )
            self.gru_ = {
                "w_ih": model.gru.weight_ih_l0.detach().cpu().numpy().astype(np.float32),
                "w_hh": model.gru.weight_hh_l0.detach().cpu().numpy().astype(np.float32),
                "b_ih": model.gru.bias_ih_l0.detach().cpu().numpy().astype(np.float32),
                "b_hh": model.gru.bias_hh_l0.detach().cpu().numpy().astype(np.float32),
            }
            self.out_w_ = model.out.weight.detach().cpu().numpy().astype(np.float32)
            self.out_b_ = model.out.bias.detach().cpu().numpy().astype(np.float32)

    def _in_vocabulary(self, items: np.ndarray) -> np.ndarray:
        """The vocabulary positions of ``items``, those outside it left out."""
        at, known = _lookup(self.vocab_, items)
        out: np.ndarray = at[known]
        return out

    # -- scoring ------------------------------------------------------------------------------

    def sequence_row(self, items: np.ndarray) -> sp.csr_matrix:
        """A (1, n_items) row for items in viewing order (-1: unknown, skipped): the session's
        distinct items by their latest view, the latest weighing 1 and each step back half the
        next, so that :meth:`user_vectors` reads the order back exactly."""
        order = latest_order(items)[-self.max_len :]
        order = order[order < self.n_items_]
        weights = 0.5 ** np.arange(len(order))[::-1]
        cols = np.argsort(order, kind="stable")
        return sp.csr_matrix(
            (
                weights[cols].astype(np.float32),
                order[cols].astype(np.int32),
                np.array([0, len(order)], dtype=np.int32),
            ),
            shape=(1, self.n_items_),
        )

    def encode(self, prefixes: np.ndarray) -> np.ndarray:
        """The session vectors ``[GRU output, 1]`` of (R, max_len) item indices left-padded
        with -1 (an item outside the vocabulary reads as padding): the same arithmetic as the
        trained network."""
        prefixes = np.asarray(prefixes, dtype=np.int64)
        at, known = _lookup(self.vocab_, prefixes)  # -1 is never in the vocabulary
        x = self.embedding_[np.where(known, at, len(self.vocab_))]
        g = self.gru_
        # Leading steps where every row is padding all reach the same state: start from it.
        padded = (~known).all(axis=0)
        lead = int(np.argmin(padded)) if not padded.all() else prefixes.shape[1]
        h = np.repeat(self._serving("pad_states")[lead][None, :], len(prefixes), axis=0)
        gi = x[:, lead:] @ g["w_ih"].T + g["b_ih"]  # (R, L, 3d): the inputs' part at once
        for t in range(gi.shape[1]):
            h = self._gru_step(gi[:, t], h)
        u = h @ self.out_w_.T + self.out_b_
        out: np.ndarray = np.concatenate([u, np.ones((len(u), 1), np.float32)], axis=1)
        return out.astype(np.float32)

    def _gru_step(self, gi: np.ndarray, h: np.ndarray) -> np.ndarray:
        """One GRU step (PyTorch's gate order r, z, n) from the input's part ``gi``."""
        g, d = self.gru_, self.dim
        gh = h @ g["w_hh"].T + g["b_hh"]
        r = _sigmoid(gi[:, :d] + gh[:, :d])
        z = _sigmoid(gi[:, d : 2 * d] + gh[:, d : 2 * d])
        cand = np.tanh(gi[:, 2 * d :] + r * gh[:, 2 * d :])
        out: np.ndarray = (1.0 - z) * cand + z * h
        return out

    def user_vectors(self, user_items: sp.csr_matrix) -> np.ndarray:
        """Each row's items in ascending weight order (oldest first: exact for
        :meth:`sequence_row`, by confidence for other histories), the last ``max_len`` encoded;
        an empty row gets a zero vector (the popular items)."""
        rows = sp.csr_matrix(user_items, dtype=np.float32)
        prefixes = np.full((rows.shape[0], self.max_len), -1, dtype=np.int64)
        empty = np.diff(rows.indptr) == 0
        for r in range(rows.shape[0]):
            lo, hi = rows.indptr[r], rows.indptr[r + 1]
            order = rows.indices[lo:hi][np.argsort(rows.data[lo:hi], kind="stable")]
            order = self.vocab_[self._in_vocabulary(order)][-self.max_len :]  # as in training
            prefixes[r, self.max_len - len(order) :] = order
        vectors = self.encode(prefixes)
        vectors[empty] = 0.0
        return vectors

    def score(self, user_items: sp.csr_matrix) -> np.ndarray:
        """The recommended items' scores; every other item :data:`UNTRAINED`, below them."""
        vectors = self.user_vectors(user_items)
        out = np.full((len(vectors), self.n_items_), UNTRAINED, dtype=np.float32)
        out[:, self.head_] = vectors @ self.head_factors_.T
        return out

    def item_scores(self, row: sp.csr_matrix, items: np.ndarray) -> np.ndarray:
        """The scores of ``items`` (indices) for one history row, as ranking gives them (the
        popularity tie-break left out)."""
        return self._scores_of(self.user_vectors(row)[0], items)

    def _scores_of(self, u: np.ndarray, items: np.ndarray) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        at, found = _lookup(self.head_, items)
        scores = np.full(len(items), UNTRAINED, dtype=np.float32)
        scores[found] = self.head_factors_[at[found]] @ u
        return scores

    def top_and_scores(
        self, row: sp.csr_matrix, n: int, blocked: np.ndarray, others: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """``recommend_one(row, n, blocked)``'s items together with ``others`` (sorted, no
        repeats) and all their scores (as :meth:`item_scores`), the session encoded once."""
        u = self.user_vectors(row)[0]
        found = self._top(u, n, blocked)
        top = found[0] if found is not None else self.recommend_one(row, n, blocked)[0]
        items = np.union1d(top, np.asarray(others, dtype=np.int64))
        return items, self._scores_of(u, items)

    # -- serving: the recommended items only ---------------------------------------------------

    def _build_serving(self, key: str) -> Any:
        if key == "head_prior":
            return TIE_BREAK * self.prior_[self.head_]
        if key == "pad_states":  # the state after 0, 1, ..., max_len padding steps
            g = self.gru_
            gi = self.embedding_[len(self.vocab_)][None, :] @ g["w_ih"].T + g["b_ih"]
            states = [np.zeros((1, self.dim), dtype=np.float32)]
            for _ in range(self.max_len):
                states.append(self._gru_step(gi, states[-1]))
            return np.concatenate(states).astype(np.float32)
        return super()._build_serving(key)

    def prepare_serving(self) -> None:
        super().prepare_serving()
        self._serving("head_prior")
        self._serving("pad_states")

    def _candidate_scores(
        self, row: sp.csr_matrix, n: int, blocked: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Every recommended item's score, one product: exact, since all others score below
        them (the factor models' bounded scan would not pay here: softmax-trained item vectors
        are of much the same length, so it cannot stop early)."""
        return self._top(self.user_vectors(row)[0], n, blocked)

    def _top(
        self, u: np.ndarray, n: int, blocked: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        ok = ~blocked[self.head_]
        if not u.any() or int(ok.sum()) < n:
            return None  # no history, or fewer recommended items left: the whole catalogue
        scores = (self.head_factors_ @ u + self._serving("head_prior"))[ok]
        top = np.argpartition(-scores, n - 1)[:n] if n < len(scores) else slice(None)
        return self.head_[ok][top], scores[top]
