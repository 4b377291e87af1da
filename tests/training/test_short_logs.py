"""Logs of any length train and serve: windows shrink to fit, a log too short for any split gets
an unevaluated champion that says so, and the choice between close models is robust."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from retailrec import registry
from retailrec.api.main import create_app
from retailrec.cli import app
from retailrec.config import get_settings
from retailrec.training.train import select
from tests.utils.factories import Shop

runner = CliRunner()
DAY = 86_400_000


def _last_days(shop: Shop, days: float, out: Path) -> Path:
    log = shop.data.events
    end = int(log["timestamp"].max())
    out.parent.mkdir(parents=True, exist_ok=True)
    log[log["timestamp"] > end - days * DAY].to_csv(out, index=False)
    return out


@pytest.mark.integration
def test_a_five_day_log_trains_and_serves_with_its_noise_band(
    tmp_path: Path, tiny_shop: Shop
) -> None:
    raw = _last_days(tiny_shop, 5, tmp_path / "five" / "events.csv")
    result = runner.invoke(app, ["pipeline", "--raw", str(raw), "--models", "popular,itemknn_bm25"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "windows: 1.25 + 1.25 days" in text  # a quarter of the log each
    assert "may be noise" in text and "promoted: version 1" in text
    assert "chose " in text
    settings = get_settings()
    log = pd.read_csv(raw)
    visitor = int(log["visitorid"].value_counts().index[0])
    with TestClient(create_app(settings)) as client:
        body = client.get(f"/v1/users/{visitor}/recommendations?k=10").json()
        assert len(body["items"]) == 10
        items = log.loc[log["visitorid"] == visitor, "itemid"].tail(3).tolist()
        session = client.post("/v1/sessions/recommendations", json={"item_ids": items}).json()
        assert session["strategy"] == "session" and len(session["items"]) == 10


@pytest.mark.integration
def test_a_log_too_short_to_split_still_gets_a_champion_that_says_so(
    tmp_path: Path, tiny_shop: Shop
) -> None:
    raw = _last_days(tiny_shop, 0.5, tmp_path / "half" / "events.csv")
    result = runner.invoke(app, ["pipeline", "--raw", str(raw)])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "too short for any train, validation and test split" in text
    assert "nothing could be evaluated" in text
    assert "promoted: version 1: first champion, unevaluated" in text
    settings = get_settings()
    log = pd.read_csv(raw)
    busy = log.groupby("visitorid").size()
    visitor = int(busy[busy >= 3].index[0])
    with TestClient(create_app(settings)) as client:
        body = client.get(f"/v1/users/{visitor}/recommendations?k=5").json()
        assert body["strategy"] == "session" and len(body["items"]) == 5
        assert client.get("/v1/model").json()["model"] == "popular"
    # An unevaluated version never replaces a champion.
    again = runner.invoke(app, ["pipeline", "--raw", str(raw)])
    assert again.exit_code == 0, again.output
    assert "was not evaluated" in " ".join(again.output.split())
    client = registry.configure(settings)
    assert str(registry.champion(client, settings.model_name).version) == "1"


def test_close_models_go_to_the_simpler_one() -> None:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, 500)
    noise = rng.normal(0, 0.15, 500)
    per_visitor = {
        "popular": base * 0.2,
        "itemknn_bm25": base,
        "als": base + 0.006 + noise - noise.mean(),  # a hair better on average, noisy
    }
    table = pd.DataFrame(
        {"val_ndcg_at_10": {m: float(np.mean(v)) for m, v in per_visitor.items()}}
    ).assign(val_n_warm=500)
    assert table["val_ndcg_at_10"].idxmax() == "als"
    chosen, reasons = select(table, per_visitor, "ndcg_at_10")
    assert chosen == "itemknn_bm25"
    assert reasons["itemknn_bm25"].startswith("within noise of als")
    assert reasons["popular"].startswith("below the best by more than noise")
    # A clear winner is chosen, however complex.
    per_visitor["als"] = base + 0.05 + noise - noise.mean()
    table["val_ndcg_at_10"] = {m: float(np.mean(v)) for m, v in per_visitor.items()}
    chosen, reasons = select(table, per_visitor, "ndcg_at_10")
    assert chosen == "als" and reasons["als"].startswith("best on validation")


def test_every_candidate_has_a_place_in_the_simplicity_order() -> None:
    """A model missing from it would count as the most complex of all (EASE, once)."""
    from retailrec.training.train import CANDIDATES, SIMPLICITY

    assert set(CANDIDATES) <= set(SIMPLICITY)
    assert SIMPLICITY.index("ease") < SIMPLICITY.index("als")  # closed form, one parameter
    assert SIMPLICITY[-1] == "ranker"  # two stages and a booster: chosen only when clearly better


def test_a_ranker_no_better_than_its_rivals_is_not_chosen_and_the_table_says_so() -> None:
    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 0.8, 500)
    noise = rng.normal(0, 0.15, 500)
    per_visitor = {"ease": base, "ranker": base + 0.004 + noise - noise.mean()}
    table = pd.DataFrame(
        {"val_ndcg_at_10": {m: float(np.mean(v)) for m, v in per_visitor.items()}}
    ).assign(val_n_warm=500)
    chosen, reasons = select(table, per_visitor, "ndcg_at_10")
    assert chosen == "ease"
    assert reasons[
        "ranker"
    ] == "best on validation ({:.4f}), but the simpler ease is within noise".format(
        table.loc["ranker", "val_ndcg_at_10"]
    )


@pytest.mark.integration
@pytest.mark.parametrize("returning", [False, True])
def test_an_event_dated_far_past_the_log_does_not_retrain_an_evaluated_champion(
    tmp_path: Path, tiny_shop: Shop, returning: bool
) -> None:
    """One event dated past a log whose champion was evaluated moves the shop's clock: two
    months on, no split has a returning visitor in both windows; ten days on (a known visitor),
    the test window holds that one visitor alone. Training refuses, registers nothing, and says
    why, instead of registering a version scored on nobody."""
    from retailrec.errors import LogTooShortError
    from retailrec.feature_store import store
    from retailrec.training.train import TrainConfig, train
    from tests.utils.factories import events_frame, loaded_settings

    settings = loaded_settings(tmp_path, tiny_shop)
    first = train(settings, TrainConfig(models=("popular",)))
    client = registry.configure(settings)
    assert registry.promote(client, settings.model_name, first.version).promoted
    with store.open_store(settings.feature_store) as conn:
        end = store.shop_clock(conn)
        assert end is not None
        visitor = int(tiny_shop.data.events["visitorid"].iloc[0]) if returning else 10**12
        gap = 10 if returning else 60
        store.append_events(conn, events_frame([(end + gap * DAY, visitor, "view", 1, None)]))
    with pytest.raises(LogTooShortError, match="nothing is registered") as refused:
        train(settings, TrainConfig(models=("popular",)))
    assert f"{gap:.1f} days after the event before it" in str(refused.value)
    if returning:
        assert "holds 1 returning visitor(s), fewer than 10" in str(refused.value)
    assert str(registry.latest_version(client, settings.model_name).version) == first.version
