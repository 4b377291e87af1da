"""Chaos, short versions (the long soak is ``bench/bench_soak.py``): ``kill -9`` at random points of
``etl``, ``train``, ``promote`` and ``serve``, a full disk and an unwritable store.

After each fault: the store passes ``PRAGMA integrity_check``, no acknowledged event is lost, the
ETL runs' counts add up to the store, the champion stays loadable, and the next run completes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from retailrec import registry
from retailrec.config import Settings
from retailrec.feature_store import store
from tests.utils.factories import Shop, loaded_settings
from tests.utils.server import free_port, wait_until_up

pytestmark = pytest.mark.integration
SEED = 20261130


def _cli(settings: Settings, *args: str, **extra: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RETAILREC_DATA_DIR": str(settings.data_dir),
        "RETAILREC_STORE_URL": settings.feature_store,
        **extra,
    }
    if settings.api_key:
        env["RETAILREC_API_KEY"] = settings.api_key
    return subprocess.Popen(
        [sys.executable, "-m", "retailrec", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _kill_after(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    """SIGKILL the process group after ``seconds``; False when it had finished by then."""
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        return True


def _intact(settings: Settings) -> sqlite3.Connection:
    conn = store.connect(settings.feature_store)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    (loaded,) = conn.execute("SELECT coalesce(sum(loaded), 0) FROM etl_runs").fetchone()
    (stored,) = conn.execute("SELECT count(*) FROM events WHERE source = 'etl'").fetchone()
    assert loaded == stored, "the ETL runs' counts no longer add up to the store"
    return conn


def test_kill_9_anywhere_in_etl_loses_nothing(tmp_path: Path, tiny_shop: Shop) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    clean = Settings(data_dir=tmp_path / "clean")
    started = time.perf_counter()
    assert _cli(clean, "etl", "--raw", str(tiny_shop.dir)).wait(timeout=300) == 0
    whole = time.perf_counter() - started
    with store.open_store(clean.feature_store) as conn:
        expected = store.event_count(conn)
    rng = random.Random(SEED)
    kills = 0
    for _ in range(5):  # at random points of a run as long as the clean one
        proc = _cli(settings, "etl", "--raw", str(tiny_shop.dir))
        kills += _kill_after(proc, rng.uniform(0.4, 0.97) * whole)
        _intact(settings).close()
    assert kills >= 2, "the ETL ended before every kill: nothing was tested"
    assert _cli(settings, "etl", "--raw", str(tiny_shop.dir)).wait(timeout=300) == 0
    conn = _intact(settings)
    assert store.event_count(conn) == expected
    report = store.last_etl_report(conn)
    assert report is not None and report["finished"] is True
    conn.close()


def test_kill_9_in_train_and_promote_keeps_a_loadable_champion(
    tmp_path: Path, tiny_shop: Shop
) -> None:
    settings = loaded_settings(tmp_path, tiny_shop)
    assert _cli(settings, "train", "--models", "popular").wait(timeout=300) == 0
    assert _cli(settings, "promote").wait(timeout=120) == 0
    started = time.perf_counter()
    assert _cli(settings, "train", "--models", "popular_category").wait(timeout=300) == 0
    whole = {"train": time.perf_counter() - started}
    started = time.perf_counter()
    assert _cli(settings, "promote").wait(timeout=120) == 0
    whole["promote"] = time.perf_counter() - started
    rng = random.Random(SEED)
    kills = 0
    for command in (["train", "--models", "popular_category"], ["promote"]) * 3:
        kills += _kill_after(_cli(settings, *command), rng.uniform(0.4, 0.97) * whole[command[0]])
        client = registry.configure(settings)
        current = registry.champion(client, settings.model_name)
        assert current is not None and registry.approved(client, current)
        registry.load_bundle(
            client, settings.model_name, str(current.version), require_approval=True
        )
        for mv in client.search_model_versions(f"name = '{settings.model_name}'"):
            assert registry.DIGEST_TAG in client.get_model_version(mv.name, mv.version).tags
    assert kills >= 3, "the runs ended before the kills: nothing was tested"
    assert _cli(settings, "train", "--models", "popular_category").wait(timeout=300) == 0
    client = registry.configure(settings)
    experiment = client.get_experiment_by_name(registry.EXPERIMENT)
    assert experiment is not None
    running = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
    assert running == [], "a killed training's runs are still RUNNING"
    _intact(settings).close()


@contextmanager
def _server(settings: Settings, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    proc = _cli(settings, "serve", "--port", str(port), **env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base}/ready", proc)
        yield proc, base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _post(base: str, events: list[dict[str, object]]) -> int:
    req = urllib.request.Request(
        f"{base}/v1/events",
        data=json.dumps({"events": events}).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # loopback only
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_kill_9_of_the_api_loses_no_acknowledged_event(tmp_path: Path, tiny_shop: Shop) -> None:
    settings = loaded_settings(tmp_path, tiny_shop)
    assert _cli(settings, "train", "--models", "popular").wait(timeout=300) == 0
    assert _cli(settings, "promote").wait(timeout=120) == 0
    with store.open_store(settings.feature_store) as conn:
        clock = store.shop_clock(conn)
    assert clock is not None
    acknowledged: list[dict[str, object]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def poster(worker: int) -> None:
        n = 0
        while not stop.is_set():
            batch = [
                {
                    "timestamp": clock - n - i,
                    "visitorid": 10**9 + worker,
                    "event": "view",
                    "itemid": 1 + (n + i) % 50,
                }
                for i in range(5)
            ]
            n += 5
            try:
                status = _post(base, batch)
            except OSError:  # the server is gone
                return
            if status == 200:
                with lock:
                    acknowledged.extend(batch)

    with _server(settings) as (proc, base):
        threads = [threading.Thread(target=poster, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        time.sleep(random.Random(SEED).uniform(1.5, 3.0))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert len(acknowledged) > 50, "too few events were posted before the kill to test anything"
    conn = _intact(settings)
    stored = set(
        conn.execute(
            "SELECT timestamp, visitorid, itemid FROM events WHERE source = 'api'"
        ).fetchall()
    )
    lost = [e for e in acknowledged if (e["timestamp"], e["visitorid"], e["itemid"]) not in stored]
    assert lost == []
    conn.close()
    with _server(settings) as (_proc, base):  # and it serves again
        assert _post(base, acknowledged[:1]) == 200


def test_a_full_disk_is_a_503_and_loses_no_acknowledged_event(
    tmp_path: Path, tiny_shop: Shop
) -> None:
    """The data dir on a tmpfs just larger than the store: posting events fills it. Writes then
    answer 503 with the reason (never a 500), /ready says the store takes no writes, and every
    acknowledged event is in the store, which stays intact."""
    settings = loaded_settings(tmp_path / "build", tiny_shop)
    assert _cli(settings, "train", "--models", "popular").wait(timeout=300) == 0
    assert _cli(settings, "promote").wait(timeout=120) == 0
    size = sum(p.stat().st_size for p in settings.data_dir.rglob("*") if p.is_file())
    mount = tmp_path / "small-disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size + (3 << 20)}", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()}")
    try:
        subprocess.run(["cp", "-a", f"{settings.data_dir}/.", str(mount)], check=True)
        full = settings.model_copy(update={"data_dir": mount})
        with store.open_store(full.feature_store) as conn:
            clock = store.shop_clock(conn)
        assert clock is not None
        acknowledged, statuses = [], set()
        unlimited = {"RETAILREC_EVENTS_RATE_PER_S": "1e9", "RETAILREC_EVENTS_BURST": "1000000000"}
        with _server(full, **unlimited) as (_proc, base):
            for n in range(4000):
                batch = [
                    {
                        "timestamp": clock - n * 200 - i,
                        "visitorid": 7 * 10**9 + n,
                        "event": "view",
                        "itemid": 1 + i,
                    }
                    for i in range(200)
                ]
                status = _post(base, batch)
                statuses.add(status)
                if status == 200:
                    acknowledged.extend(batch)
                elif status == 503:
                    break
            assert 503 in statuses and not any(s >= 500 and s != 503 for s in statuses), statuses
            with pytest.raises(urllib.error.HTTPError) as ready:
                urllib.request.urlopen(f"{base}/ready", timeout=10)  # loopback only
            assert ready.value.code == 503
            assert json.loads(ready.value.read())["store_writable"] is False
        conn = store.connect(full.feature_store, read_only=True)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        (count,) = conn.execute(
            "SELECT count(*) FROM events WHERE visitorid >= ?", (7 * 10**9,)
        ).fetchone()
        assert count == len(acknowledged) > 0
        conn.close()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
