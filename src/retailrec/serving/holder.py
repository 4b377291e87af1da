"""The model holder: the served bundle, swapped atomically when a new champion loads."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

from retailrec.config import Settings
from retailrec.errors import BundleError
from retailrec.models.bundle import ModelBundle, folder_digest
from retailrec.serving.fetch import fetch
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

        The registry is read in a child process (:mod:`retailrec.serving.fetch`): it resolves
        the version, checks the gate's approval and the bundle's checksum and downloads the files
        into a folder of ours. MLflow and its database layer never enter the serving process
        (about 100 MB resident, docs/BENCHMARKS.md). The files are checked against the
        checksum once more here, then loaded; the folder is removed whether they load or not.

        Raises:
            NoChampionError: no champion; RegistryError: not approved, or the registry failed;
            BundleError: the bundle does not load or answer.
        """
        name = self.settings.model_name
        with (
            self._lock,  # one reload at a time; serving never waits on this lock
            tempfile.TemporaryDirectory(prefix=f"{name}-v{version or 'champion'}-") as tmp,
        ):
            version, path, digest = fetch(self.settings, version, Path(tmp))
            if folder_digest(path) != digest:
                raise BundleError(
                    f"version {version} of {name}: the bundle's files changed after they were"
                    " checked (checksum mismatch): refused"
                )
            served = RecommendationService(ModelBundle.load(path), version)
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
