"""Apache Spark sessions for the commands that run on it (``--engine spark``): the ETL
(:mod:`retailrec.data_pipeline.spark_etl`) and ALS's fit (:class:`~retailrec.models.factors.
ALSRecommender` with ``engine="spark"``). pyspark is imported only when a session is asked for."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from retailrec.errors import SparkJobError, UsageError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

#: Settings of the session :func:`session` starts (a cluster's own settings win where given).
SESSION_CONF = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.shuffle.partitions": "8",
    # Every input value is text; values are compared as written, never inferred.
    "spark.sql.caseSensitive": "true",
}


def spark_installed() -> bool:
    return importlib.util.find_spec("pyspark") is not None


def under_spark_submit() -> bool:
    """Whether ``spark-submit`` started this process: it hands the driver's gateway to Python
    in these variables, with the master and the resources it was given."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def session(master: str | None = None, conf: dict[str, str] | None = None) -> SparkSession:
    """A Spark session on ``master``; under ``spark-submit``, on the master it was given, and
    :data:`SESSION_CONF` applies only where ``spark-submit``'s settings leave a key unset."""
    if not spark_installed():
        raise UsageError(
            "the spark engine needs pyspark (pip install -r requirements.txt) and Java 17"
        )
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    given = SparkConf() if under_spark_submit() else None  # spark-submit's settings
    if given is None:
        builder = builder.appName("retailrec")
        if master is not None:
            builder = builder.master(master)
    for key, value in {**SESSION_CONF, **(conf or {})}.items():
        if given is None or not given.contains(key) or key in (conf or {}):
            builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


@contextlib.contextmanager
def running(master: str | None = None) -> Iterator[SparkSession]:
    """A session for one command: the active one where there is one (under ``spark-submit``, or
    a test's), left running; else a new one on ``master``, stopped at the end."""
    active = None
    if spark_installed():
        from pyspark.sql import SparkSession

        active = SparkSession.getActiveSession()
    spark = active or session(master)
    try:
        yield spark
    except Exception as exc:
        if _from_the_jvm(exc):
            raise SparkJobError(job_failure(str(exc))) from exc
        raise
    finally:
        if active is None:
            spark.stop()


def _from_the_jvm(exc: Exception) -> bool:
    """Whether ``exc`` is a failure inside Spark's JVM: py4j's error, or pyspark's translation
    of one (an ``AnalysisException``, a ``SparkRuntimeException``...)."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors.exceptions.captured import CapturedException

    return isinstance(exc, Py4JJavaError | CapturedException)


#: Spark's error classes that mean too little memory (its SQLSTATE 53200 is "out of memory").
_OUT_OF_MEMORY = ("OutOfMemoryError", "UNABLE_TO_ACQUIRE_MEMORY", "SQLSTATE: 53200")


def job_failure(text: str) -> str:
    """One line for a failed Spark job from the JVM's error text: its deepest cause, and where
    it is memory, which setting gives more."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    causes = [line.removeprefix("Caused by: ") for line in lines if line.startswith("Caused by:")]
    cause = causes[-1] if causes else next((x for x in lines if "Exception" in x), "")
    cause = cause.lstrip(": ") or (lines[0] if lines else "no reason given")
    line = f"a Spark job failed: {cause[:300]}"
    if any(mark in text for mark in _OUT_OF_MEMORY):
        line += (
            "; give Spark more memory: spark-submit --executor-memory (on a cluster) or"
            " --driver-memory (local[N], where the executors run in the driver)"
        )
    return line
