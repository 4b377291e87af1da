"""Every model through the same suite, on a checkerboard whose right answer is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from retailrec.data_pipeline.feature_pipeline import item_catalogue
from retailrec.errors import UsageError
from retailrec.models import MODELS, Dataset, Recommender, make_model
from retailrec.models.base import BaseRecommender
from tests.utils.checkerboard import checkerboard_catalogue, checkerboard_events
from tests.utils.factories import Shop

FAST = {
    "two_tower": {"epochs": 30, "dim": 16, "batch_size": 64, "lr": 0.02},
    "bpr": {"iterations": 300},
    "sequence": {"epochs": 30, "dim": 16, "batch_size": 64, "lr": 0.02, "n_negatives": 8},
}
#: Models that use the visitor's history (popularity variants other than by-category do not).
PERSONAL = [m for m in MODELS if m not in ("popular", "popular_7d")]


@pytest.fixture(scope="module")
def data() -> Dataset:
    return Dataset.from_events(checkerboard_events(), checkerboard_catalogue())


@pytest.fixture(scope="module")
def fitted(data: Dataset) -> dict[str, BaseRecommender]:
    return {name: make_model(name, **FAST.get(name, {})).fit(data) for name in MODELS}


@pytest.mark.parametrize("name", list(MODELS))
def test_satisfies_the_protocol(name: str, fitted: dict[str, BaseRecommender]) -> None:
    model = fitted[name]
    assert isinstance(model, Recommender)
    assert model.n_items_ == 30


@pytest.mark.parametrize("name", list(MODELS))
def test_recommend_shapes_order_and_filters(
    name: str, data: Dataset, fitted: dict[str, BaseRecommender]
) -> None:
    model = fitted[name]
    history = data.matrix[:6]
    banned = np.array([0, 1, 2])
    items, scores = model.recommend(history, 5, filter_items=banned)
    assert items.shape == scores.shape == (6, 5)
    for r in range(6):
        row = items[r]
        assert len(set(row)) == 5
        assert not set(row) & set(history[r].indices)  # already-liked items are filtered
        assert not set(row) & set(banned)
        assert np.all(np.diff(scores[r]) <= 1e-6)  # best first
    kept, _ = model.recommend(history, 30, filter_already_liked_items=False)
    assert (kept[:, :] >= 0).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_asking_for_more_than_the_catalogue_pads(
    name: str, data: Dataset, fitted: dict[str, BaseRecommender]
) -> None:
    items, scores = fitted[name].recommend(data.matrix[:2], 40)
    assert items.shape == (2, 30)
    n_seen = np.diff(data.matrix[:2].indptr)
    for r in range(2):
        assert (items[r] == -1).sum() == n_seen[r]
        assert np.isneginf(scores[r][items[r] == -1]).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_an_empty_history_gets_the_popular_items(
    name: str, data: Dataset, fitted: dict[str, BaseRecommender]
) -> None:
    empty = sp.csr_matrix((1, data.n_items), dtype=np.float32)
    items, _ = fitted[name].recommend(empty, 2)
    pop = data.item_popularity()
    assert set(items[0]) == set(np.argsort(-pop, kind="stable")[:2])


@pytest.mark.parametrize("name", PERSONAL)
def test_known_answer_own_group_first(
    name: str, data: Dataset, fitted: dict[str, BaseRecommender]
) -> None:
    """Visitors of group g should be recommended unseen items of group g, not of the other.

    Once a visitor's seen items are filtered out, 8 of the 23 candidates are in their group:
    chance is 35%. Every model must put at least 80% of its top 3 there.
    """
    items, _ = fitted[name].recommend(data.matrix, 3)
    user_group = (data.user_ids - 1000) % 2
    item_group = (data.item_ids[items] - 500) % 2
    share = (item_group == user_group[:, None]).mean()
    assert share >= 0.8, f"{name}: only {share:.0%} of top-3 items in the visitor's own group"


@pytest.mark.parametrize("name", list(MODELS))
def test_save_and_load_give_the_same_answers(
    name: str, data: Dataset, fitted: dict[str, BaseRecommender], tmp_path: Path
) -> None:
    model = fitted[name]
    model.save(tmp_path / "m.pkl")
    again = BaseRecommender.load(tmp_path / "m.pkl")
    a, sa = model.recommend(data.matrix[:5], 5)
    b, sb = again.recommend(data.matrix[:5], 5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(sa, sb, rtol=1e-6)


@pytest.mark.parametrize("name", list(MODELS))
def test_a_bundle_from_before_a_new_parameter_still_loads(
    name: str, data: Dataset, fitted: dict[str, BaseRecommender], tmp_path: Path
) -> None:
    """An upgrade adds a constructor argument: a model pickled before it lacks the attribute.
    Loading fills in the default (it failed with AttributeError at serving time before: a
    ``SessionRecommender`` written before ``sequence_weight`` existed)."""
    import inspect
    import pickle

    model = fitted[name]
    state = model.__getstate__()
    defaults = {
        key: p.default
        for key, p in inspect.signature(type(model).__init__).parameters.items()
        if key != "self" and p.default is not p.empty and state.get(key) == p.default
    }
    assert defaults, f"{name}: no argument at its default to drop"
    old = {key: value for key, value in state.items() if key not in defaults}
    path = tmp_path / "old.pkl"
    path.write_bytes(pickle.dumps(_OldBundle(type(model), old)))
    again = BaseRecommender.load(path)
    assert {key: getattr(again, key) for key in defaults} == defaults
    a, sa = model.recommend(data.matrix[:5], 5)
    b, sb = again.recommend(data.matrix[:5], 5)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(sa, sb, rtol=1e-6)


class _OldBundle:
    """Pickles as ``kind`` with exactly ``state``: what an older release would have written."""

    def __init__(self, kind: type, state: dict[str, object]) -> None:
        self.kind, self.state = kind, state

    def __reduce__(self) -> tuple[object, ...]:
        return (_blank, (self.kind,), self.state)


def _blank(kind: type) -> object:
    return kind.__new__(kind)


@pytest.mark.parametrize("name", PERSONAL)
def test_similar_items_excludes_the_item_and_stays_in_group(
    name: str, fitted: dict[str, BaseRecommender]
) -> None:
    if name == "popular_category":
        pytest.skip("popularity has no item-to-item notion beyond the category")
    items, scores = fitted[name].similar_items(np.array([4, 7]), 3)
    assert 4 not in items[0] and 7 not in items[1]
    for row, group in ((0, 0), (1, 1)):
        assert items[row][0] % 2 == group  # the most similar item is in the same group
        if name == "sequence":  # next-item logits have no zero point: its top two
            assert (items[row][:2] % 2 == group).all()
            continue
        # Anything scored above the popularity tie-break is in the group too.
        related = items[row][scores[row] > 1e-4]
        assert ((related % 2) == group).all()


def test_fresh_history_changes_the_answer(
    data: Dataset, fitted: dict[str, BaseRecommender]
) -> None:
    """Scoring from a history, not a stored user vector: a new event moves the ranking."""
    model = fitted["als"]
    row = data.matrix[[0]].toarray()
    before, _ = model.recommend(sp.csr_matrix(row), 5)
    other_group = np.arange(1, 30, 2)
    row[0, other_group[:6]] = 20.0  # the visitor suddenly buys in the other group
    after, _ = model.recommend(sp.csr_matrix(row), 5)
    assert ((after[0] % 2) == 1).mean() > ((before[0] % 2) == 1).mean()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_params_are_the_constructors_arguments(name: str) -> None:
    """params() is read from the constructor: every argument but the seed and the device, and
    a model built from its own params() reports the same ones."""
    import inspect

    model = make_model(name)
    params = model.params()
    args = set(inspect.signature(type(model).__init__).parameters) - {"self"}
    assert set(params) == args - set(BaseRecommender.NOT_PARAMS)
    assert make_model(name, **params).params() == params
    changed = {key: value for key, value in params.items() if isinstance(value, int)}
    changed = {key: value + 1 for key, value in changed.items() if not isinstance(value, bool)}
    assert make_model(name, **{**params, **changed}).params() == {**params, **changed}


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(UsageError, match="unknown model 'nope'"):
        make_model("nope")


def test_loading_something_else_is_refused(tmp_path: Path) -> None:
    import pickle

    (tmp_path / "x.pkl").write_bytes(pickle.dumps({"not": "a model"}))
    with pytest.raises(TypeError, match="does not hold a RetailRec model"):
        BaseRecommender.load(tmp_path / "x.pkl")


def _same_ranking(model: BaseRecommender, row: sp.csr_matrix, n: int, blocked: np.ndarray) -> None:
    """``recommend_one`` ranks like ``recommend``: the same scores in the same order, and each
    item is one that ``recommend`` scores the same (identical items wherever there is no tie)."""
    items, scores = model.recommend_one(row, n, blocked)
    full_items, full_scores = (
        a[0]
        for a in model.recommend(
            row,
            model.n_items_,
            filter_already_liked_items=False,
            filter_items=np.flatnonzero(blocked),
        )
    )
    finite = np.isfinite(full_scores)
    full_items, full_scores = full_items[finite], full_scores[finite]
    # float32: a matrix product and a gathered one may differ in the last bits
    np.testing.assert_allclose(scores, full_scores[:n], rtol=1e-5, atol=1e-6)
    score_of = dict(zip(full_items.tolist(), full_scores.tolist(), strict=True))
    for i, (item, s) in enumerate(zip(items.tolist(), scores.tolist(), strict=True)):
        assert score_of[item] == pytest.approx(s, rel=1e-5, abs=1e-6)
        if np.isclose(full_scores, s, rtol=1e-5, atol=1e-6).sum() == 1:
            assert item == full_items[i]


@pytest.mark.parametrize("name", list(MODELS))
def test_the_serving_path_ranks_like_recommend(
    name: str, data: Dataset, fitted: dict[str, BaseRecommender]
) -> None:
    model = fitted[name]
    model.prepare_serving()
    rng = np.random.default_rng(0)
    rows = [*(data.matrix[r] for r in range(8)), sp.csr_matrix((1, 30), dtype=np.float32)]
    for row in rows:
        for density in (0.0, 0.2, 0.9, 1.0):
            blocked = rng.random(30) < density
            for n in (1, 5, 30):
                _same_ranking(model, row, n, blocked)


@pytest.mark.parametrize(
    "name", ["popular_7d", "popular_category", "itemknn_cosine", "session", "als", "bpr"]
)
def test_the_serving_path_on_a_real_sized_catalogue(name: str, tiny_shop: Shop) -> None:
    """Thousands of items and many categories: candidate lists must grow past blocked items."""
    catalogue = item_catalogue(tiny_shop.data.item_properties)
    data = Dataset.from_events(tiny_shop.data.events, catalogue)
    model = make_model(name).fit(data)
    rng = np.random.default_rng(1)
    for r in rng.choice(data.n_users, 30, replace=False):
        row = data.matrix[int(r)]
        blocked = rng.random(data.n_items) < rng.choice([0.01, 0.5, 0.99])
        for n in (10, 100):
            _same_ranking(model, row, n, blocked)


@pytest.mark.parametrize("name", list(MODELS))
def test_a_shop_without_item_properties_is_served(name: str) -> None:
    """No catalogue file at all (no category anywhere): every model fits and serves, and the
    serving path still ranks like ``recommend``."""
    data = Dataset.from_events(checkerboard_events())
    assert (data.item_category == -1).all()
    model = make_model(name).fit(data)
    model.prepare_serving()
    for r in range(4):
        _same_ranking(model, data.matrix[r], 5, np.zeros(data.n_items, dtype=bool))


@pytest.mark.parametrize(
    "blend",
    [
        {"decay": 0.0, "cooc_weight": 0.0, "pop_weight": 0.0},
        {"decay": 0.4, "cooc_weight": 0.01, "pop_weight": 0.1},
    ],
)
def test_a_blended_session_model_serves_as_it_recommends(
    blend: dict[str, float], tiny_shop: Shop
) -> None:
    data = Dataset.from_events(tiny_shop.data.events)
    model = make_model("session").fit(data)
    model.blend(**blend)  # type: ignore[attr-defined]
    rng = np.random.default_rng(2)
    for r in rng.choice(data.n_users, 20, replace=False):
        row = data.matrix[int(r)]
        _same_ranking(model, row, 10, rng.random(data.n_items) < 0.3)


def test_the_als_fold_in_is_implicits_user_step(tiny_shop: Shop) -> None:
    """Serving folds a history into a visitor vector with its own solve; it must be the vector
    implicit's least squares gives, for real histories of every length."""
    from retailrec.models import factors

    data = Dataset.from_events(tiny_shop.data.events)
    model = make_model("als", iterations=3).fit(data)
    assert isinstance(model, factors.ALSRecommender)
    rows = data.matrix[np.argsort(-np.diff(data.matrix.indptr))[:40:4]]  # the longest histories
    rows = sp.vstack([rows, data.matrix[:30]]).tocsr()
    ours = model.user_vectors(rows)
    theirs = model.model_.recalculate_user(np.arange(rows.shape[0]), rows)
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-4 * np.abs(theirs).max())


def test_visitors_with_one_item_do_not_move_the_als_factors(tiny_shop: Shop) -> None:
    """ALS and BPR fit on the visitors with two or more items: a thousand more visitors with one
    view each leave ALS's item factors exactly as they were (serving folds every visitor in)."""
    import pandas as pd

    from retailrec.models import factors

    events = tiny_shop.data.events
    data = Dataset.from_events(events)
    rng = np.random.default_rng(3)
    extra = events.sample(1000, random_state=3, replace=True).assign(
        visitorid=events["visitorid"].max() + 1 + np.arange(1000),
        event="view",
        transactionid=np.nan,
        timestamp=lambda f: f["timestamp"] - rng.integers(0, 1000, len(f)),
    )
    more = Dataset.from_events(pd.concat([events, extra], ignore_index=True))
    assert more.n_users == data.n_users + 1000 and np.array_equal(more.item_ids, data.item_ids)
    assert factors.co_occurring_rows(more.matrix).shape[0] < data.n_users
    ours = make_model("als", iterations=3).fit(data).item_factors_  # type: ignore[attr-defined]
    theirs = make_model("als", iterations=3).fit(more).item_factors_  # type: ignore[attr-defined]
    np.testing.assert_array_equal(ours, theirs)
    # No visitor with two items: the whole matrix is kept (the fit still has rows to use).
    singles = sp.csr_matrix(np.eye(4, dtype=np.float32))
    assert factors.co_occurring_rows(singles).shape == (4, 4)


def test_the_serving_path_past_the_ordered_head(
    tiny_shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the factors serving keeps in scoring order, the whole catalogue is scored in one
    product: the ranking is the same on either side."""
    from retailrec.models import factors

    monkeypatch.setattr(factors, "SCORING_CHUNK", 256)
    monkeypatch.setattr(factors, "ORDERED_HEAD", 512)
    data = Dataset.from_events(tiny_shop.data.events)
    assert data.n_items > 4 * 512
    model = make_model("als", iterations=3).fit(data)
    model.prepare_serving()
    assert len(model._serving("ordered_factors")[0]) == 512
    rng = np.random.default_rng(2)
    for r in rng.choice(data.n_users, 20, replace=False):
        blocked = rng.random(data.n_items) < 0.99  # so that the top 10 lies deep in the order
        _same_ranking(model, data.matrix[int(r)], 10, blocked)


def test_large_unpickled_arrays_move_to_memory_numpy_owns(
    data: Dataset,
    fitted: dict[str, BaseRecommender],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Serving copies a loaded model's item factors out of the pickle's buffer into numpy's own
    allocation (transparent huge pages), once, with implicit's model pointing at the same copy,
    and answers as before."""
    import pickle

    from retailrec.models import base, factors

    big = pickle.loads(pickle.dumps(np.ones((1024, 1024), dtype=np.float32)))  # 4 MiB
    assert not big.flags.owndata
    moved = base.in_huge_pages(big)
    assert moved.flags.owndata and moved is not big and np.array_equal(moved, big)
    assert base.in_huge_pages(moved) is moved  # owned already
    small = pickle.loads(pickle.dumps(np.ones(10, dtype=np.float32)))
    assert base.in_huge_pages(small) is small  # not worth a copy

    monkeypatch.setattr(base, "HUGE_PAGE_BYTES", 0)  # the checkerboard's factors are tiny
    fitted["als"].save(tmp_path / "als.pkl")
    als = BaseRecommender.load(tmp_path / "als.pkl")
    assert isinstance(als, factors.ALSRecommender)
    assert not als.item_factors_.flags.owndata
    als.prepare_serving()
    assert als.item_factors_.flags.owndata
    assert als.model_.item_factors is als.item_factors_  # one copy in memory, not two
    expected, _ = fitted["als"].recommend(data.matrix[:5], 5)
    np.testing.assert_array_equal(als.recommend(data.matrix[:5], 5)[0], expected)


def test_models_fitted_on_one_dataset_share_their_popularity(
    data: Dataset, fitted: dict[str, BaseRecommender], tmp_path: Path
) -> None:
    """A bundle's models each hold the same popularity array and its order: serving keeps one
    copy for all of them, and their answers do not change."""
    fitted["als"].save(tmp_path / "als.pkl")
    fitted["itemknn_bm25"].save(tmp_path / "knn.pkl")
    als, knn = (
        BaseRecommender.load(tmp_path / "als.pkl"),
        BaseRecommender.load(tmp_path / "knn.pkl"),
    )
    before = (
        knn.recommend(data.matrix[:5], 5)[0],
        knn.recommend_one(sp.csr_matrix((1, 30)), 5, np.zeros(30, bool))[0],
    )
    assert knn.prior_ is not als.prior_
    assert knn.share_popularity(als)
    assert knn.prior_ is als.prior_ and knn._serving("prior_order") is als._serving("prior_order")
    after = (
        knn.recommend(data.matrix[:5], 5)[0],
        knn.recommend_one(sp.csr_matrix((1, 30)), 5, np.zeros(30, bool))[0],
    )
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    other = make_model("popular").fit(Dataset.from_events(checkerboard_events().head(200)))
    assert not other.share_popularity(als) and other.prior_ is not als.prior_


@pytest.mark.parametrize("similarity", ["bm25", "cosine"])
def test_item_knn_is_implicits_own_similarity(similarity: str, tiny_shop: Shop) -> None:
    """The leaner build (zeros dropped before the CSR, docs/BENCHMARKS.md) holds exactly what
    implicit's own recommender fitted on the same matrix holds, less the self-pairs."""
    import warnings

    from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

    from retailrec.models.item_item import knn_similarity

    data = Dataset.from_events(
        tiny_shop.data.events, item_catalogue(tiny_shop.data.item_properties)
    )
    model = BM25Recommender(K=50) if similarity == "bm25" else CosineRecommender(K=50)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Method expects CSR input")
        model.fit(data.matrix, show_progress=False)
    expected = sp.csr_matrix(model.similarity, dtype=np.float32)
    expected.setdiag(0)
    expected.eliminate_zeros()
    got = knn_similarity(data.matrix, 50, similarity)
    assert got.dtype == np.float32 and got.shape == (data.n_items, data.n_items)
    assert got.diagonal().max() == 0 and got.nnz > data.n_items  # neighbours, no self-pairs
    assert (got != expected).nnz == 0
