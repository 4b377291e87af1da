"""Apache Spark sessions for the commands that run on it (``--engine spark``): the ETL
(:mod:`retailrec.data_pipeline.spark_etl`) and ALS's fit (:class:`~retailrec.models.factors.
ALSRecommender` with ``engine="spark"``). pyspark is imported only when a session is asked for."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from retailrec.errors import UsageError

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
    finally:
        if active is None:
            spark.stop()
