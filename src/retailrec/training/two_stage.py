"""Training the second stage: a LambdaRank ranker over the bundle's candidates.

On a :class:`~retailrec.training.train.Stage` (a window, and the shop before it), the models are
fitted on the events before the window and bundled as they would be served; every returning
visitor of the window (a seeded sample of at most :data:`MAX_VISITORS`) is answered by the
serving path's own first stage (``RecommendationService.candidates``, with the evaluation rules),
and each candidate is labelled by whether the visitor touched it in the window. Features are as of
the window's start: histories end there, and the item features come from the events before it.

* :func:`fit` trains a ranker on a stage's labels.
* :func:`out_of_fold` scores a stage's visitors with rankers that never saw them (two folds by
  visitor): the honest validation figure that chooses between the ranker and the single models.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from retailrec.models import ranker as rk
from retailrec.models.base import BaseRecommender
from retailrec.models.bundle import ModelBundle
from retailrec.models.data import Dataset
from retailrec.serving.service import RecommendationService
from retailrec.training import evaluate as ev

if TYPE_CHECKING:
    from retailrec.training.train import Stage

#: Returning visitors whose candidates train a ranker, at most (a seeded sample beyond).
MAX_VISITORS = 2_000


def with_item_features(bundle: ModelBundle, data: Dataset) -> ModelBundle:
    """``bundle`` with the item features of ``data`` (as of its end), what candidates read."""
    bundle.item_features = rk.item_feature_matrix(data)
    return bundle


def attach(bundle: ModelBundle, ranker: rk.CandidateRanker) -> ModelBundle:
    """``bundle`` (with its item features) served through ``ranker``, which its metadata
    describes."""
    bundle.ranker = ranker
    bundle.metadata["ranker"] = {
        **ranker.info,
        "sources": list(rk.SOURCES),
        "features": list(rk.FEATURES),
    }
    return bundle


@dataclass
class Rows:
    """A stage's training rows: candidate features, labels, rows per visitor, and the visitors."""

    features: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    visitors: np.ndarray

    def subset(self, keep: np.ndarray) -> Rows:
        """The rows of the visitors where ``keep`` (one flag per visitor) is True."""
        starts = np.r_[0, np.cumsum(self.groups)[:-1]]
        rows = np.concatenate(
            [np.arange(s, s + g) for s, g, k in zip(starts, self.groups, keep, strict=True) if k]
            or [np.zeros(0, dtype=np.int64)]
        )
        return Rows(self.features[rows], self.labels[rows], self.groups[keep], self.visitors[keep])

    def fit(self, info: dict[str, Any]) -> rk.CandidateRanker:
        return rk.CandidateRanker.fit(self.features, self.labels, self.groups, info)


def stage_service(
    stage: Stage, name: str, params: dict[str, Any], model: BaseRecommender
) -> RecommendationService:
    """The bundle a stage would serve with ``model`` (fitted on its data), with item features
    for the first stage and no ranker yet."""
    from retailrec.training.train import assemble

    bundle = assemble(stage.data, name, params, model, stage.aux())
    return RecommendationService(with_item_features(bundle, stage.data), "two-stage")


def rows(served: RecommendationService, stage: Stage, random_state: int = 0) -> Rows:
    """Every sampled returning visitor's candidates, features and labels (visitors with no
    touched candidate teach a ranker nothing and are left out)."""
    touched = stage.window.groupby("visitorid")["itemid"].unique()
    visitors = np.intersect1d(touched.index.to_numpy(np.int64), stage.histories.visitors)
    if len(visitors) > MAX_VISITORS:
        rng = np.random.default_rng(random_state)
        visitors = np.sort(rng.choice(visitors, MAX_VISITORS, replace=False))
    feats, labels, groups, kept = [], [], [], []
    for v in visitors:
        p = served.prepare(stage.histories.get(int(v)))
        now = max(stage.clock_ms, p.newest_ms)
        row = served.history_row(p, now)
        if not row.nnz:
            continue
        blocked = served.rules.blocked(ev.EVAL_RULES, p.cols, p.purchased)
        items, x = served.candidates(p, row, blocked, now)
        y = np.isin(served.bundle.item_ids[items], touched[v])
        if y.any():
            feats.append(x)
            labels.append(y.astype(np.float32))
            groups.append(len(items))
            kept.append(int(v))
    width = len(rk.FEATURES)
    return Rows(
        np.concatenate(feats) if feats else np.zeros((0, width), np.float32),
        np.concatenate(labels) if labels else np.zeros(0, np.float32),
        np.asarray(groups, dtype=np.int64),
        np.asarray(kept, dtype=np.int64),
    )


def fold_of(visitor_ids: np.ndarray) -> np.ndarray:
    """0 or 1 per visitor: a fixed hash of the id, so a visitor's fold never changes."""
    v = np.asarray(visitor_ids, dtype=np.uint64)
    return ((v * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(63)).astype(np.int64)


def out_of_fold(served: RecommendationService, stage: Stage, train_rows: Rows) -> ev.Ranker:
    """A :class:`~retailrec.training.evaluate.Ranker` over the stage's visitors in which each
    visitor is ranked by the ranker fitted on the other fold's visitors only."""
    folds = fold_of(train_rows.visitors)
    services = []
    for f in (0, 1):
        booster = train_rows.subset(folds != f).fit({"fold": f})
        bundle = dataclasses.replace(served.bundle, ranker=booster)
        services.append(RecommendationService(bundle, f"fold-{f}"))

    def rank(visitor_ids: np.ndarray, n: int) -> np.ndarray:
        out = np.full((len(visitor_ids), n), -1, dtype=np.int64)
        for r, (v, f) in enumerate(zip(visitor_ids, fold_of(visitor_ids), strict=True)):
            history = stage.histories.get(int(v))
            answer = services[f].for_history(history, n, ev.EVAL_RULES, stage.clock_ms)
            out[r, : len(answer.items)] = answer.items[:n]
        return out

    return rank


def base_model(val_scores: dict[str, float], excluded: tuple[str, ...]) -> str:
    """The ranker's retrieval model: the best on validation of those not ``excluded``; BM25
    item-kNN where none ran."""
    learned = {m: v for m, v in val_scores.items() if m not in excluded and m != "oracle"}
    return max(learned, key=lambda m: learned[m]) if learned else "itemknn_bm25"


@dataclass
class Fitted:
    """The ranker's validation and test figures, and what serving it needs."""

    base: str
    base_params: dict[str, Any]
    booster: rk.CandidateRanker
    val: dict[str, float]
    test: dict[str, float]
    val_per_visitor: dict[str, np.ndarray]
    seconds: float
    #: The base fitted on the test stage's data (what the test window was served with).
    test_model: BaseRecommender

    @property
    def params(self) -> dict[str, Any]:
        return {"base": self.base, "base_params": self.base_params}

    def for_serving(self, test: Stage) -> rk.CandidateRanker:
        """The ranker trained on the test window's labels (over the candidates of the base as
        fitted before it): the one to serve after it, as the other models are refitted for
        serving. The validation ranker where the test window taught nothing."""
        found = trained(test, self.base, self.base_params, self.test_model)
        return self.booster if found is None else found


def trained(
    stage: Stage,
    base: str,
    base_params: dict[str, Any],
    model: BaseRecommender | None = None,
) -> rk.CandidateRanker | None:
    """A ranker trained on ``stage``'s window, over the candidates of ``model`` (the base,
    fitted on the stage's data; fitted here when not given). None: no visitor touched a
    candidate."""
    from retailrec.training.train import _fit

    if model is None:
        model, _ = _fit(base, base_params, stage.data)
    found = rows(stage_service(stage, base, base_params, model), stage)
    if not len(found.groups):
        return None
    return found.fit({"base": base, "window_start_ms": stage.start_ms})


def fit_and_score(
    val: Stage,
    test: Stage,
    base: str,
    base_params: dict[str, Any],
    fitted: tuple[BaseRecommender, BaseRecommender] | None = None,
) -> Fitted | None:
    """Train the ranker on the validation window; its validation figures out of fold, its test
    figures from the ranker trained on all of validation, served over the test window's
    candidates. ``fitted``: the base already fitted on the validation and the test stage's data
    (fitted here when not given). None: nothing to learn from."""
    import time

    from retailrec.training.train import _fit

    start = time.perf_counter()
    model, test_model = fitted if fitted is not None else (None, None)
    if model is None:
        model, _ = _fit(base, base_params, val.data)
    served = stage_service(val, base, base_params, model)
    found = rows(served, val)
    if not len(found.groups):
        return None
    per_visitor: dict[str, np.ndarray] = {}
    val_metrics = ev.evaluate(
        out_of_fold(served, val, found),
        val.histories,
        val.window,
        n_items=val.data.n_items,
        per_visitor=per_visitor,
    )
    booster = found.fit({"base": base, "window_start_ms": val.start_ms})
    seconds = time.perf_counter() - start
    if test_model is None:
        test_model, _ = _fit(base, base_params, test.data)
    bundle = attach(stage_service(test, base, base_params, test_model).bundle, booster)
    test_metrics = test.score_bundle(bundle)
    return Fitted(
        base, base_params, booster, val_metrics, test_metrics, per_visitor, seconds, test_model
    )


def refit(before: Stage, window: Stage, params: dict[str, Any]) -> ModelBundle:
    """The two-stage configuration ``params`` served for ``window``: the base fitted on the
    events before it, the ranker trained on the window before (``before``), as training would
    have built it then."""
    from retailrec.training.train import _fit

    base, base_params = str(params["base"]), dict(params.get("base_params", {}))
    booster = trained(before, base, base_params)
    model, _ = _fit(base, base_params, window.data)
    bundle = stage_service(window, base, base_params, model).bundle
    return bundle if booster is None else attach(bundle, booster)
