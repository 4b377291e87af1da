"""Factories for test data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from retailrec.data_pipeline import synth


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


def make_shop(out: Path, scale: str = "tiny", seed: int = 0, drift: bool = False) -> Shop:
    config = synth.config_for(scale, drift=drift)
    data = synth.generate(config, random_state=seed)
    synth.write(data, out)
    return Shop(out, data, config, seed)
