"""``retailrec download``: the real Retailrocket files, fetched with the user's Kaggle credentials.

This is the only code in RetailRec that reaches the network, and only when the user asks.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from retailrec.errors import DownloadError

log = logging.getLogger(__name__)

DATASET = "retailrocket/ecommerce-dataset"
DATASET_PAGE = "https://www.kaggle.com/datasets/retailrocket/ecommerce-dataset"
FILES = (
    "events.csv",
    "item_properties_part1.csv",
    "item_properties_part2.csv",
    "category_tree.csv",
)


def _by_hand(raw_dir: Path) -> str:
    return f"download {', '.join(FILES)} from {DATASET_PAGE} and put them in {raw_dir}/"


def has_credentials(env: dict[str, str] | None = None, home: Path | None = None) -> bool:
    """Whether Kaggle credentials are configured (environment variables or kaggle.json)."""
    env = dict(os.environ) if env is None else env
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return True
    if env.get("KAGGLE_API_TOKEN"):
        return True
    home = Path(env.get("HOME", str(Path.home()))) if home is None else home
    places = [home / ".kaggle", home / ".config" / "kaggle"]
    if env.get("KAGGLE_CONFIG_DIR"):
        places.insert(0, Path(env["KAGGLE_CONFIG_DIR"]))
    return any((p / "kaggle.json").is_file() for p in places)


def download(raw_dir: Path) -> list[Path]:
    """Fetch the dataset through kagglehub and copy its files into ``raw_dir``.

    Files already present with the same size are left alone, so a second run does nothing.

    Returns:
        The paths in ``raw_dir`` of the dataset's files.

    Raises:
        DownloadError: no credentials, kagglehub missing, offline, or the files are incomplete.
    """
    raw_dir = Path(raw_dir)
    if not has_credentials():
        raise DownloadError(
            "no Kaggle credentials (set KAGGLE_USERNAME and KAGGLE_KEY or create "
            f"~/.kaggle/kaggle.json); or {_by_hand(raw_dir)}"
        )
    try:
        import kagglehub
    except ImportError as exc:
        raise DownloadError(f"kagglehub is not installed; {_by_hand(raw_dir)}") from exc
    try:
        src = Path(kagglehub.dataset_download(DATASET))
    except Exception as exc:  # kagglehub raises many types (HTTP, auth, DNS); all mean the same
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DownloadError(
            f"could not download {DATASET} ({reason}); {_by_hand(raw_dir)}"
        ) from exc
    missing = [name for name in FILES if not (src / name).is_file()]
    if missing:
        raise DownloadError(f"the download lacks {', '.join(missing)}; {_by_hand(raw_dir)}")
    raw_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for name in FILES:
        target = raw_dir / name
        if not (target.is_file() and target.stat().st_size == (src / name).stat().st_size):
            tmp = target.with_suffix(".part")
            shutil.copyfile(src / name, tmp)
            tmp.replace(target)
            log.info("copied %s", target)
        out.append(target)
    return out
