"""A failed Spark job is one line that says why and what to change, not a bug report."""

from __future__ import annotations

from typing import Any

import pytest

from retailrec.errors import SparkJobError
from retailrec.spark import job_failure, running

#: What the JVM said when a 10x log's dedupe ran out of memory in a 1 GB executor (abridged).
OUT_OF_MEMORY = """An error occurred while calling o188.parquet.
: org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 in stage 12.0 failed 1 times, most recent failure: Lost task 0.0 in stage 12.0 (TID 25) (192.0.2.2 executor driver): org.apache.spark.memory.SparkOutOfMemoryError: [UNABLE_TO_ACQUIRE_MEMORY] Unable to acquire 262144 bytes of memory, got 0. SQLSTATE: 53200
\tat org.apache.spark.errors.SparkCoreErrors$.outOfMemoryError(SparkCoreErrors.scala:428)
Caused by: org.apache.spark.memory.SparkOutOfMemoryError: [UNABLE_TO_ACQUIRE_MEMORY] Unable to acquire 262144 bytes of memory, got 0. SQLSTATE: 53200
\tat org.apache.spark.memory.MemoryConsumer.throwOom(MemoryConsumer.java:166)
"""  # noqa: E501


def test_out_of_memory_names_its_cause_and_the_setting_to_change() -> None:
    line = job_failure(OUT_OF_MEMORY)
    assert "\n" not in line
    assert line.startswith(
        "a Spark job failed: org.apache.spark.memory.SparkOutOfMemoryError: "
        "[UNABLE_TO_ACQUIRE_MEMORY]"
    )
    assert "--executor-memory" in line and "--driver-memory" in line


def test_another_failure_names_its_cause_only() -> None:
    text = "An error occurred while calling o1.count.\n: java.io.IOException: disk full\n\tat x"
    line = job_failure(text)
    assert line == "a Spark job failed: java.io.IOException: disk full"
    assert "memory" not in line


def test_a_job_that_fails_in_the_jvm_is_a_one_line_error(spark: Any) -> None:
    from pyspark.sql import functions as sf

    # The test's session, as the commands find it.
    with pytest.raises(SparkJobError, match=r"a Spark job failed: .*boom") as info, running() as s:
        s.range(3).select(sf.raise_error(sf.lit("boom"))).collect()
    assert "\n" not in str(info.value) and "memory" not in str(info.value)
