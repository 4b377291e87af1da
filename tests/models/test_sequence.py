"""The sequential session model: its examples, its numpy encoder, and a known answer that only
order can give."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from retailrec.models import Dataset, make_model
from retailrec.models.sequence import (
    UNTRAINED,
    SequenceRecommender,
    gru_last_states,
    items_first,
    latest_order,
    session_sequences,
    training_examples,
)
from retailrec.training import evaluate as ev
from tests.utils.factories import events_frame

T = 1_500_000_000_000
MIN = 60_000


def test_sessions_and_examples_by_hand() -> None:
    groups = np.array([1, 1, 1, 1, 1, 2, 3, 3])
    items = np.array([5, 5, 6, 5, 7, 9, 4, 8])
    sequences = session_sequences(groups, items)
    # The repeat of 5 in a row collapses; a one-item session is no sequence.
    assert [s.tolist() for s in sequences] == [[5, 6, 5, 7], [4, 8]]
    prefixes, targets = training_examples(sequences, max_len=2)
    # 5 back after 6 is not new to the session: no example; it moves 5 behind 6.
    assert prefixes.tolist() == [[-1, 5], [6, 5], [-1, 4]]
    assert targets.tolist() == [6, 7, 8]
    assert latest_order(np.array([5, 3, -1, 5, 7])).tolist() == [3, 5, 7]


#: Known-answer sessions: each starts at its own item (10 + k), goes through the same two items
#: (1, then 2) and ends at its own item (20 + k). After 2, only the first item tells the end.
PATTERNS = 4


def pattern_log(n_sessions: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_sessions):
        k = int(rng.integers(PATTERNS))
        for j, item in enumerate((10 + k, 1, 2, 20 + k)):
            rows.append((T + s * 100 * MIN + j * MIN, s, "view", item, None))
    return events_frame(rows)


@pytest.fixture(scope="module")
def patterns() -> tuple[Dataset, SequenceRecommender]:
    data = Dataset.from_events(pattern_log())
    model = make_model("sequence", dim=16, epochs=15, batch_size=64, lr=0.02, n_negatives=4)
    model.fit(data)
    assert isinstance(model, SequenceRecommender)
    return data, model


def test_order_decides_where_the_last_item_cannot(
    patterns: tuple[Dataset, SequenceRecommender],
) -> None:
    """Known answer: the model remembers how the session began; sequential rules read the last
    item, whose four successors are equally likely."""
    data, model = patterns
    examples = [(np.array([10 + k, 1, 2]), 20 + k) for k in range(PATTERNS)]

    def sequence_rank(items: np.ndarray, n: int) -> np.ndarray:
        idx = data.item_index(items)
        blocked = np.zeros(data.n_items, dtype=bool)
        blocked[idx] = True
        found = model.recommend_one(model.sequence_row(idx), n, blocked)[0]
        return np.asarray(data.item_ids[found])

    assert ev.session_scores(sequence_rank, examples, 1) == (1.0, 1.0)
    rules = ev.sequential_rules_ranker(pattern_log())
    assert ev.session_scores(rules, examples, 1)[0] <= 0.5
    assert ev.session_scores(rules, examples, PATTERNS)[0] == 1.0  # all four, in some order


def test_the_numpy_encoder_is_the_trained_network(
    patterns: tuple[Dataset, SequenceRecommender],
) -> None:
    _, model = patterns
    gru = torch.nn.GRU(model.dim, model.dim, batch_first=True)
    with torch.no_grad():
        gru.weight_ih_l0.copy_(torch.from_numpy(model.gru_["w_ih"]))
        gru.weight_hh_l0.copy_(torch.from_numpy(model.gru_["w_hh"]))
        gru.bias_ih_l0.copy_(torch.from_numpy(model.gru_["b_ih"]))
        gru.bias_hh_l0.copy_(torch.from_numpy(model.gru_["b_hh"]))
        prefixes = np.array([[-1, -1, 2, 3], [0, 1, 2, 3], [-1, -1, -1, 5]])
        at = np.where(prefixes >= 0, np.searchsorted(model.vocab_, prefixes), len(model.vocab_))
        x = torch.from_numpy(model.embedding_[at])
        states, _ = gru(x)
        expected = states[:, -1].numpy() @ model.out_w_.T + model.out_b_
    got = model.encode(prefixes)
    np.testing.assert_allclose(got[:, :-1], expected, rtol=1e-4, atol=1e-5)
    assert (got[:, -1] == 1.0).all()  # the item bias's weight
    assert (model.embedding_[len(model.vocab_)] == 0).all()  # the padding embeds as nothing


def test_training_encodes_items_only_as_the_left_padded_gru_does() -> None:
    """Training runs the GRU over each prefix's items from the state its padding reaches: the
    same states as over the left-padded rows that serving encodes, and the same gradients."""
    torch.manual_seed(0)
    dim, pad = 8, 6
    embed = torch.nn.Embedding(pad + 1, dim, padding_idx=pad)
    gru = torch.nn.GRU(dim, dim, batch_first=True)
    prefixes = np.array([[-1, -1, 2, 3], [0, 1, 2, 3], [-1, -1, -1, 5], [-1, 4, 4, 0]])
    ahead, lengths = items_first(prefixes)
    assert ahead.tolist() == [[2, 3, -1, -1], [0, 1, 2, 3], [5, -1, -1, -1], [4, 4, 0, -1]]
    assert lengths.tolist() == [2, 4, 1, 3]
    padded, _ = gru(embed(torch.from_numpy(np.where(prefixes >= 0, prefixes, pad))))
    expected = padded[:, -1]
    got = gru_last_states(
        gru,
        embed,
        torch.from_numpy(np.where(ahead >= 0, ahead, pad)),
        torch.from_numpy(lengths),
        pad,
    )
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    grads = []
    for out in (expected, got):
        gru.zero_grad()
        out.sum().backward(retain_graph=True)
        grads.append(gru.weight_hh_l0.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_a_row_reads_back_in_order(patterns: tuple[Dataset, SequenceRecommender]) -> None:
    """``sequence_row`` keeps the order through the weights, so scoring the row is encoding the
    session's distinct items by their latest view."""
    _, model = patterns
    row = model.sequence_row(np.array([4, 1, -1, 4, 2, 2]))
    assert sorted(row.indices.tolist()) == [1, 2, 4]
    vectors = model.user_vectors(row)
    prefix = np.full((1, model.max_len), -1)
    prefix[0, -3:] = [1, 4, 2]
    np.testing.assert_allclose(vectors, model.encode(prefix), rtol=1e-6)
    scores = model.item_scores(row, np.arange(model.n_items_))
    np.testing.assert_allclose(scores, model.score(row)[0], rtol=1e-5, atol=1e-6)


def test_items_never_a_target_rank_last_and_serving_scores_only_the_rest(
    patterns: tuple[Dataset, SequenceRecommender],
) -> None:
    """The sessions' first items (10..13) are never a next item: the model does not recommend
    them. They rank below every other item, and the serving path, which scores only the items it
    recommends, ranks exactly as the whole catalogue does."""
    data, model = patterns
    untrained = data.item_index(np.arange(10, 10 + PATTERNS))
    assert not np.isin(untrained, model.head_).any()
    assert len(model.head_) == data.n_items - PATTERNS
    row = model.sequence_row(data.item_index(np.array([11, 1])))
    assert (model.score(row)[0, untrained] == UNTRAINED).all()
    assert (model.item_scores(row, untrained) == UNTRAINED).all()
    full, _ = model.recommend(row, data.n_items, filter_already_liked_items=False)
    assert set(full[0][-PATTERNS:].tolist()) == set(untrained.tolist())
    model.prepare_serving()
    for blocked_items in ([], [1, 2], [1, 2, 20, 21, 22]):
        blocked = np.zeros(data.n_items, dtype=bool)
        blocked[data.item_index(np.array(blocked_items, dtype=np.int64))] = True
        expected = [i for i in full[0].tolist() if not blocked[i]]
        trained = [i for i in expected if i not in untrained]
        for n in (1, 3, data.n_items):  # all: past the recommended items, the whole catalogue
            got = model.recommend_one(row, n, blocked)[0].tolist()
            assert got[: len(trained)] == trained[:n]
            # Then the others, which tie (their tie-break is below float32's resolution).
            assert len(got) == min(n, len(expected))
            assert set(got[len(trained) :]) <= set(untrained.tolist())


def test_it_recommends_the_items_most_often_next() -> None:
    """``max_items`` bounds what it recommends to the most frequent next items: 1 and 2 follow
    in every session, each end item in a quarter of them."""
    data = Dataset.from_events(pattern_log())
    model = make_model("sequence", dim=8, epochs=1, max_items=2).fit(data)
    assert isinstance(model, SequenceRecommender)
    assert data.item_ids[model.head_].tolist() == [1, 2]
    assert model.train_stats_["vocabulary"] == data.n_items
    assert model.train_stats_["recommended_items"] == 2


def test_it_reads_the_items_most_often_in_sessions_and_leaves_out_the_rest() -> None:
    """``max_vocab`` bounds what it reads: with two, only 1 and 2 (in every session); an end
    item is then left out of a session as if it were not there, in training and in serving."""
    data = Dataset.from_events(pattern_log())
    model = make_model("sequence", dim=8, epochs=1, max_vocab=2).fit(data)
    assert isinstance(model, SequenceRecommender)
    assert data.item_ids[model.vocab_].tolist() == [1, 2]
    assert data.item_ids[model.head_].tolist() == [2]  # the only next item it saw
    assert model.embedding_.shape == (3, 8)  # two items and the padding
    with_other = model.sequence_row(data.item_index(np.array([11, 1, 21])))
    alone = model.sequence_row(data.item_index(np.array([1])))
    np.testing.assert_array_equal(model.user_vectors(with_other), model.user_vectors(alone))
