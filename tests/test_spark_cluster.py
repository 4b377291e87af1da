"""``spark-submit`` to a standalone Spark cluster, a master and a worker started here on free
ports: the ETL and ALS's fit run as cluster applications, with the executors capped at 1 GB, and
give what the embedded engine gives (pyspark and Java 17; skipped where either is missing)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import retailrec
from retailrec import registry
from retailrec.config import Settings
from retailrec.data_pipeline import etl
from retailrec.feature_store import store
from tests.utils.factories import Shop
from tests.utils.server import free_port, get_json

pytestmark = pytest.mark.slow


@dataclass
class Cluster:
    home: Path  # SPARK_HOME: pyspark's own folder
    master: str  # spark://host:port
    ui: str  # the master's web UI, whose /json/ lists workers and applications
    env: dict[str, str]

    def submit(self, name: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """``spark-submit`` of the ``retailrec`` command ``args`` as application ``name``."""
        command = [
            str(self.home / "bin" / "spark-submit"),
            *("--master", self.master, "--name", name),
            *("--executor-memory", "1g", "--driver-memory", "1g"),
            str(Path(retailrec.__file__).parent / "__main__.py"),
            *args,
        ]
        env = {**self.env, "RETAILREC_DATA_DIR": str(data_dir)}
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)

    def state(self) -> Any:
        return get_json(f"{self.ui}/json/")


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("the spark engine needs Java (17)")
    import pyspark

    home = Path(pyspark.__file__).parent
    work = tmp_path_factory.mktemp("spark_cluster")
    env = {
        **os.environ,
        "SPARK_HOME": str(home),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_WORKER_DIR": str(work / "worker"),
        "SPARK_LOG_DIR": str(work / "logs"),
        # No REST submission port: nothing here uses it, and it would be one more port to find.
        "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
        # The driver is this Python; the executors get none that runs, so a step that sent
        # Python code to them would fail: they need only the JVM (README, "On a cluster").
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "PYSPARK_PYTHON": str(work / "no-python-on-executors"),
    }
    port, ui_port = free_port(), free_port()
    master = f"spark://127.0.0.1:{port}"
    ui = f"http://127.0.0.1:{ui_port}"
    spark_class = str(home / "bin" / "spark-class")
    master_args = ["--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui_port)]
    worker_args = ["--cores", "2", "--memory", "2g", "--host", "127.0.0.1", "--webui-port", "0"]
    processes = [
        _start(
            [spark_class, "org.apache.spark.deploy.master.Master", *master_args],
            env,
            work / "master.log",
        )
    ]
    try:
        deadline = time.time() + 120
        while True:  # the master first, then a worker that registers with it
            try:
                get_json(f"{ui}/json/", timeout=2)
                break
            except OSError:
                if time.time() > deadline or processes[0].poll() is not None:
                    pytest.fail(f"no Spark master: {(work / 'master.log').read_text()[-2000:]}")
                time.sleep(0.5)
        processes.append(
            _start(
                [spark_class, "org.apache.spark.deploy.worker.Worker", master, *worker_args],
                env,
                work / "worker.log",
            )
        )
        running = Cluster(home, master, ui, env)
        while not [w for w in running.state()["workers"] if w["state"] == "ALIVE"]:
            if time.time() > deadline or processes[1].poll() is not None:
                pytest.fail(f"no Spark worker: {(work / 'worker.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield running
    finally:
        for process in reversed(processes):
            with_children = process.pid
            try:
                os.killpg(with_children, signal.SIGTERM)
            except ProcessLookupError:
                continue
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(with_children, signal.SIGKILL)
                process.wait(timeout=30)


def _finished(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    return [a for a in cluster.state()["completedapps"] if a["name"] == name]


def test_etl_and_als_run_as_applications_of_a_standalone_cluster(
    cluster: Cluster, tiny_shop: Shop, tmp_path: Path
) -> None:
    import mlflow

    data_dir = tmp_path / "data"
    result = cluster.submit(
        "retailrec-etl", data_dir, "etl", "--engine", "spark", "--raw", str(tiny_shop.dir)
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [app] = _finished(cluster, "retailrec-etl")  # the master ran it, on its worker's executors
    assert app["state"] == "FINISHED" and app["cores"] >= 1
    assert app["memoryperexecutor"] == 1024  # the executors' cap, MiB

    # What the cluster stored is what the embedded engine stores from the same files.
    embedded = Settings(data_dir=tmp_path / "embedded")
    with store.open_store(embedded.feature_store) as conn:
        expected = etl.run_etl(
            tiny_shop.dir,
            conn=conn,
            rejected_dir=embedded.rejected_dir,
            processed_dir=embedded.processed_dir,
            reports_dir=embedded.reports_dir,
        )
        expected_events = store.read_events(conn)
    with store.open_store(Settings(data_dir=data_dir).feature_store) as conn:
        stored = store.read_events(conn)
    assert f"{expected.rows_read:,}" in result.stdout and f"{expected.loaded:,}" in result.stdout
    assert len(stored) == expected.loaded == len(expected_events) > 0
    sort = ["timestamp", "visitorid", "itemid", "event"]
    assert (
        stored.sort_values(sort)
        .reset_index(drop=True)
        .equals(expected_events.sort_values(sort).reset_index(drop=True))
    )

    # ALS fitted by MLlib on the cluster; the bundle is registered like any other.
    result = cluster.submit(
        "retailrec-train", data_dir, "train", "--engine", "spark", "--models", "popular,als"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert _finished(cluster, "retailrec-train")
    # As the product points MLflow at a store (a bare set_tracking_uri would leave the URI in the
    # environment, where the next test's settings would read it as the user's).
    registry.configure(Settings(data_dir=data_dir))
    als = mlflow.search_runs(search_all_experiments=True, filter_string="tags.model = 'als'")
    assert list(als["params.engine"]) == ["spark"]
    assert float(als["metrics.ndcg_at_10"].iloc[0]) > 0
