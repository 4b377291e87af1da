"""Factories for test data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from retailrec.config import Settings
from retailrec.data_pipeline import etl
from retailrec.feature_store import store
from retailrec.synthetic import synth


@dataclass
class Shop:
    """A synthetic shop on disk and in memory."""

    dir: Path
    data: synth.SynthData
    config: synth.SynthConfig
    seed: int

    @property
    def events_csv(self) -> Path:
        return self.dir / "events.csv"

    @property
    def truth(self) -> Path:
        return self.dir / "truth"


def events_frame(rows: list[tuple[int, int, str, int, int | None]]) -> pd.DataFrame:
    """Typed events from (timestamp, visitorid, event, itemid, transactionid) tuples."""
    ts, vis, ev, item, tx = zip(*rows, strict=True)
    return pd.DataFrame(
        {
            "timestamp": np.array(ts, dtype=np.int64),
            "visitorid": np.array(vis, dtype=np.int64),
            "event": list(ev),
            "itemid": np.array(item, dtype=np.int64),
            "transactionid": pd.array(list(tx), dtype="Int64"),
        }
    )


def loaded_settings(
    root: Path, shop: Shop, events: pd.DataFrame | None = None, **settings: object
) -> Settings:
    """Settings for a data dir under ``root`` holding ``shop``'s files, loaded by the ETL.

    ``events`` replaces the shop's events; the oracle's ``truth/`` is linked in.
    """
    s = Settings(data_dir=root / "data", **settings)  # type: ignore[arg-type]
    s.raw_dir.mkdir(parents=True)
    for name in ("item_properties.csv", "category_tree.csv"):
        (s.raw_dir / name).write_bytes((shop.dir / name).read_bytes())
    (s.raw_dir / "truth").symlink_to(shop.truth)
    (events if events is not None else shop.data.events).to_csv(
        s.raw_dir / "events.csv", index=False
    )
    run_etl_on(s)
    return s


def run_etl_on(settings: Settings) -> None:
    with store.open_store(settings.feature_store) as conn:
        etl.run_etl(
            settings.raw_dir,
            conn=conn,
            rejected_dir=settings.rejected_dir,
            processed_dir=settings.processed_dir,
        )


def make_shop(out: Path, scale: str = "tiny", seed: int = 0, drift: bool = False) -> Shop:
    config = synth.config_for(scale, drift=drift)
    data = synth.generate(config, random_state=seed)
    synth.write(data, out)
    return Shop(out, data, config, seed)
