"""The command line: exit codes, one-line errors, and commands that are safe to run twice."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from retailrec.cli import app
from retailrec.config import get_settings
from retailrec.data_pipeline import download as download_mod
from retailrec.feature_store import store

runner = CliRunner()


def _hashes(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.integration
def test_synth_writes_the_shop_and_is_safe_to_run_twice(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    first = runner.invoke(app, ["synth", "--scale", "tiny", "--seed", "5", "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert "rows" in first.output and "visitors" in first.output
    before = _hashes(out)
    assert {"events.csv", "item_properties.csv", "category_tree.csv", "params.json"} <= set(before)
    second = runner.invoke(app, ["synth", "--scale", "tiny", "--seed", "5", "--out", str(out)])
    assert second.exit_code == 0
    assert _hashes(out) == before


def test_synth_defaults_to_the_data_dir(tmp_path: Path) -> None:
    result = runner.invoke(app, ["synth", "--scale", "tiny"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "raw" / "events.csv").is_file()


def test_bad_scale_exits_1_with_one_line() -> None:
    result = runner.invoke(app, ["synth", "--scale", "huge"])
    assert result.exit_code == 1
    expected = "error: unknown scale 'huge'; choose one of tiny, small, full, 10x"
    assert result.output.strip() == expected


def test_bad_usage_exits_2() -> None:
    assert runner.invoke(app, ["synth", "--no-such-option"]).exit_code == 2
    assert runner.invoke(app, ["no-such-command"]).exit_code == 2


def test_download_without_credentials_explains_where_to_put_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    result = runner.invoke(app, ["download"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "no Kaggle credentials" in lines[0]
    assert "events.csv" in lines[0] and str(tmp_path / "data" / "raw") in lines[0]


def _fake_kagglehub(monkeypatch: pytest.MonkeyPatch, source: Path | Exception) -> list[str]:
    calls: list[str] = []

    def dataset_download(handle: str) -> str:
        calls.append(handle)
        if isinstance(source, Exception):
            raise source
        return str(source)

    monkeypatch.setitem(
        sys.modules, "kagglehub", types.SimpleNamespace(dataset_download=dataset_download)
    )
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "secret")
    return calls


def test_download_copies_the_dataset_into_raw_and_is_idempotent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    for name in download_mod.FILES:
        (cache / name).write_text(f"{name} contents\n")
    calls = _fake_kagglehub(monkeypatch, cache)
    result = runner.invoke(app, ["download"])
    assert result.exit_code == 0, result.output
    raw = tmp_path / "data" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(download_mod.FILES)
    assert (raw / "events.csv").read_text() == "events.csv contents\n"
    mtime = (raw / "events.csv").stat().st_mtime_ns
    assert runner.invoke(app, ["download"]).exit_code == 0
    assert (raw / "events.csv").stat().st_mtime_ns == mtime
    assert calls == [download_mod.DATASET] * 2


def test_download_offline_fails_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_kagglehub(monkeypatch, ConnectionError("Failed to resolve host\nmore detail"))
    result = runner.invoke(app, ["download"])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1
    assert "Failed to resolve host" in result.output and "put them in" in result.output


def test_credentials_are_found_in_kaggle_json(tmp_path: Path) -> None:
    assert not download_mod.has_credentials(env={}, home=tmp_path)
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    assert download_mod.has_credentials(env={}, home=tmp_path)
    assert download_mod.has_credentials(
        env={"KAGGLE_USERNAME": "u", "KAGGLE_KEY": "k"}, home=tmp_path / "x"
    )


@pytest.mark.integration
def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "retailrec", "--help"],
        capture_output=True,
        text=True,
        check=False,
        env=os.environ,
    )
    assert result.returncode == 0
    assert "synth" in result.stdout and "download" in result.stdout


@pytest.mark.integration
def test_etl_then_features_on_a_synthetic_shop(tmp_path: Path) -> None:
    assert runner.invoke(app, ["synth", "--scale", "tiny", "--seed", "2"]).exit_code == 0
    first = runner.invoke(app, ["etl"])
    assert first.exit_code == 0, first.output
    assert "loaded" in first.output and "duplicates" in first.output
    data = tmp_path / "data"
    assert store.exists(get_settings().feature_store)  # on the suite's backend
    assert (data / "processed" / "events.parquet").is_file()
    assert (data / "reports" / "etl-latest.json").is_file()
    second = runner.invoke(app, ["etl"])
    assert second.exit_code == 0
    features = runner.invoke(app, ["features"])
    assert features.exit_code == 0, features.output
    assert "visitors" in features.output


@pytest.mark.parametrize(("folder", "message"), [("empty", "no events.csv"), (None, "no such")])
def test_etl_without_events_exits_1_with_one_line(
    tmp_path: Path, folder: str | None, message: str
) -> None:
    raw = tmp_path / (folder or "nothing")
    if folder:
        raw.mkdir()
    result = runner.invoke(app, ["etl", "--raw", str(raw)])
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1
    assert message in result.output


def _etl_error(tmp_path: Path, events_csv: str) -> tuple[Path, str]:
    """(the events file, the one line) of `retailrec etl` failing on that file."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "events.csv").write_text(events_csv)
    result = runner.invoke(app, ["etl", "--raw", str(raw)])
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    return raw / "events.csv", line


def test_etl_with_a_missing_column_exits_1_with_one_line(tmp_path: Path) -> None:
    path, line = _etl_error(tmp_path, "timestamp,visitorid,event\n1,2,view\n")
    assert line == (
        f"error: {path}: missing required column(s) itemid, transactionid"
        " (the header has timestamp, visitorid, event)"
    )


def test_etl_of_a_file_without_a_header_says_so(tmp_path: Path) -> None:
    _, line = _etl_error(tmp_path, "1433221332117,2,view,3,\n")
    assert "the first line looks like data, not a header" in line
    assert line.endswith(
        "start the file with the line timestamp,visitorid,event,itemid,transactionid)"
    )


def test_pipeline_on_a_given_folder_without_an_event_log_fails_and_writes_nothing(
    tmp_path: Path,
) -> None:
    raw = tmp_path / "my-shop"
    raw.mkdir()
    (raw / "orders.csv").write_text("order,amount\n1,9.99\n")
    result = runner.invoke(app, ["pipeline", "--raw", str(raw)])
    assert result.exit_code == 1
    assert "no events.csv in" in result.output
    assert "name it: --raw" in result.output
    assert sorted(p.name for p in raw.iterdir()) == ["orders.csv"]  # no synthetic shop in it


def test_features_as_of_takes_a_date_and_refuses_a_time_before_the_first_event(
    real_sample: Path,
) -> None:
    assert runner.invoke(app, ["etl", "--raw", str(real_sample)]).exit_code == 0
    result = runner.invoke(app, ["features", "--as-of", "2015-06-01"])
    assert result.exit_code == 0, result.output
    assert "features as of 1433116800000:" in result.output
    result = runner.invoke(app, ["features", "--as-of", "1433116800"])  # seconds, by mistake
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert "is before the first event" in line and "Unix milliseconds" in line
    result = runner.invoke(app, ["features", "--as-of", "soon"])
    assert result.exit_code == 1
    assert "not a point in time: 'soon'" in result.output


def test_features_before_etl_exits_1() -> None:
    result = runner.invoke(app, ["features"])
    assert result.exit_code == 1
    assert "run `retailrec etl` first" in result.output


@pytest.mark.integration
def test_serve_bootstrap_trains_a_first_champion_then_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    from retailrec import registry
    from retailrec.config import get_settings

    served: list[dict[str, object]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: served.append(kw))
    args = ["serve", "--bootstrap", "--bootstrap-scale", "tiny", "--bootstrap-models", "popular"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert len(served) == 1 and served[0]["port"] == 8000, first.output
    settings = get_settings()
    client = registry.configure(settings)
    assert str(registry.champion(client, settings.model_name).version) == "1"
    assert (settings.raw_dir / "events.csv").is_file()  # the embedded synthetic shop
    again = runner.invoke(app, args)  # a champion exists: straight to serving
    assert again.exit_code == 0 and len(served) == 2
    assert str(registry.latest_version(client, settings.model_name).version) == "1"


@pytest.mark.integration
def test_training_on_a_sparse_shop_warns_that_the_figures_are_noise(real_sample: Path) -> None:
    result = runner.invoke(app, ["pipeline", "--raw", str(real_sample), "--models", "popular"])
    assert result.exit_code == 0, result.output
    n = int(result.output.split("scored on ")[1].split()[0])
    assert 0 < n < 30
    assert f"differences under ±{1 / n**0.5:.3f} may be noise" in " ".join(result.output.split())
    assert f"warning: only {n} visitors in the test window had a history" in result.output
    assert "promoted: version 1" in result.output
    assert "generating a synthetic shop" not in result.output  # --raw took the file itself


def test_serve_refuses_a_data_dir_it_cannot_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    from retailrec.config import get_settings

    if os.geteuid() == 0:  # root writes anywhere: make the data dir path a file instead
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("")
        monkeypatch.setenv("RETAILREC_DATA_DIR", str(blocker / "data"))
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        monkeypatch.setenv("RETAILREC_DATA_DIR", str(locked))
    get_settings.cache_clear()
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: pytest.fail("served anyway"))
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 1
    assert "is not writable by uid" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_retailrec_error_is_one_line_and_a_bug_is_shown_with_debug(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CLI catches RetailRecError alone: anything else is a bug, whose traceback --debug
    shows (a ValueError from a bug is not dressed up as a user's mistake)."""
    from retailrec.data_pipeline import feature_pipeline
    from retailrec.errors import NoDataError, RetailRecError

    assert issubclass(NoDataError, RetailRecError)
    user = runner.invoke(app, ["features"])  # an empty store: the user's to fix
    assert user.exit_code == 1
    assert user.output.strip().splitlines() == [
        "error: the feature store has no events: run `retailrec etl` first"
    ]

    def broken(*_args: object, **_kwargs: object) -> None:
        raise ValueError("index 7 is out of bounds\nsecond line")

    monkeypatch.setattr(feature_pipeline, "build_features", broken)
    bug = runner.invoke(app, ["features"])
    assert bug.exit_code == 1
    (line,) = bug.output.strip().splitlines()
    assert line.startswith("error: unexpected ValueError: index 7 is out of bounds")
    assert "--debug" in line and "a bug in RetailRec" in line
    shown = runner.invoke(app, ["--debug", "features"])
    assert isinstance(shown.exception, ValueError)  # raised through: the traceback is shown
    assert "out of bounds" in str(shown.exception)
    assert runner.invoke(app, ["features"]).exit_code == 1  # --debug lasts one invocation


def test_serve_and_the_dashboard_bind_this_machine_only_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reachable by others only when asked (`--host 0.0.0.0`, as the container does); the
    dashboard shows no traceback, with its source paths, in the browser."""
    import uvicorn

    from retailrec.config import get_settings

    monkeypatch.setenv("RETAILREC_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    served: list[dict[str, object]] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: served.append(kw))
    assert runner.invoke(app, ["serve"]).exit_code == 0
    assert runner.invoke(app, ["serve", "--host", "0.0.0.0"]).exit_code == 0
    assert [s["host"] for s in served] == ["127.0.0.1", "0.0.0.0"]
    started: list[list[str]] = []
    monkeypatch.setattr(os, "execv", lambda _exe, cmd: started.append(cmd))
    assert runner.invoke(app, ["dashboard"]).exit_code == 0
    (cmd,) = started
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--client.showErrorDetails") + 1] == "none"
    dockerfile = (Path(__file__).resolve().parents[1] / "Dockerfile").read_text()
    assert 'CMD ["retailrec", "serve", "--bootstrap", "--host", "0.0.0.0"]' in dockerfile


def test_serve_workers_listen_on_a_socket_whose_connections_get_tcp_nodelay() -> None:
    """`serve --workers N` hands its workers a listener whose accepted connections asyncio sets
    TCP_NODELAY on (uvicorn's own gave proto 0, so none, and each keep-alive answer waited
    ~40 ms on the client's delayed ACK); a port in use is a one-line error."""
    import asyncio
    import socket

    from retailrec.cli import _listener
    from retailrec.errors import RetailRecError

    sock = _listener("127.0.0.1", 0)
    port = sock.getsockname()[1]
    nodelay: list[int] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            accepted = transport.get_extra_info("socket")
            nodelay.append(accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()  # type: ignore[attr-defined]

    async def accept_one() -> None:
        server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            for _ in range(100):
                if nodelay:
                    break
                await asyncio.sleep(0.01)
            writer.close()

    asyncio.run(accept_one())
    assert nodelay and nodelay[0] != 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(RetailRecError, match=r"cannot listen on 127\.0\.0\.1:"):
            _listener("127.0.0.1", taken.getsockname()[1])


def test_a_url_given_to_raw_stays_a_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--raw s3a://bucket/events` reaches the ETL as written (a path would fold its `//`), and
    the default engine says in one line that only the spark engine reads it."""
    monkeypatch.setenv("RETAILREC_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    for command in (["etl"], ["pipeline"]):
        result = runner.invoke(app, [*command, "--raw", "s3a://bucket/events/"])
        assert result.exit_code == 1, result.output
        assert "s3a://bucket/events/: a URL is read by the spark engine only" in result.output
        assert len(result.output.strip().splitlines()) == 1
