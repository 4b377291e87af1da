"""The model holder: the served bundle, swapped atomically when a new champion loads."""

from __future__ import annotations

import threading
from pathlib import Path

from retailrec.config import Settings
from retailrec.errors import BundleError, NoChampionError
from retailrec.models.bundle import ModelBundle
from retailrec.serving.rules import Rules
from retailrec.serving.service import RecommendationService


class ModelHolder:
    """The served bundle. Requests take a reference once and keep it: a reload swaps the
    reference in one assignment, so requests in flight finish on the model they started with."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.current: RecommendationService | None = None
        self._lock = threading.Lock()

    def load(self, version: str | None = None) -> tuple[RecommendationService, str | None]:
        """Load ``version`` (default: the champion) and swap it in; returns (new, previous version).

        Raises:
            NoChampionError: no champion; BundleError: the bundle does not load or answer.
        """
        from retailrec import registry  # MLflow loads when a model does, not with the API

        with self._lock:  # one reload at a time; serving never waits on this lock
            client = registry.configure(self.settings)
            if version is None:
                champion = registry.champion(client, self.settings.model_name)
                if champion is None:
                    raise NoChampionError(
                        f"no champion for {self.settings.model_name}: run `retailrec pipeline`"
                    )
                version = str(champion.version)
            bundle = registry.load_bundle(
                client, self.settings.model_name, version, require_approval=True
            )
            served = RecommendationService(bundle, version)
            _smoke_test(served)
            previous = None if self.current is None else self.current.version
            self.current = served
            return served, previous

    def load_dir(self, path: Path, version: str) -> RecommendationService:
        """Serve a bundle folder directly (tests, and deployments without a registry)."""
        served = RecommendationService(ModelBundle.load(path), version)
        _smoke_test(served)
        self.current = served
        return served


def _smoke_test(served: RecommendationService) -> None:
    """A bundle must answer before it serves: one anonymous and one item request."""
    if served.bundle.n_items == 0:
        raise BundleError("the bundle's catalogue is empty")
    answer = served.for_session([int(served.bundle.item_ids[0])], 3, Rules(exclude_purchased=False))
    if not answer.items:
        raise BundleError("the bundle answered nothing for a session request")
