"""A real ``retailrec serve`` process on a free port, for tests that need uvicorn itself."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from retailrec.config import Settings


def get_json(url: str, timeout: float = 30) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:  # loopback only
        return json.loads(r.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` exits."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:  # loopback only
                if r.status == 200:
                    return
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{url} did not come up") from None
            time.sleep(0.3)


@contextmanager
def serving(settings: Settings, **env: str) -> Iterator[str]:
    """Serve ``settings.data_dir`` until the block ends; yields the base URL once ready."""
    port = free_port()
    environ = {
        **os.environ,
        "RETAILREC_DATA_DIR": str(settings.data_dir),
        "RETAILREC_STORE_URL": settings.feature_store,
        **env,
    }
    if settings.api_key:
        environ["RETAILREC_API_KEY"] = settings.api_key
    server = subprocess.Popen(
        [sys.executable, "-m", "retailrec", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=environ,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{base}/ready", server)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
