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


@contextmanager
def serving(settings: Settings, **env: str) -> Iterator[str]:
    """Serve ``settings.data_dir`` until the block ends; yields the base URL once ready."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    environ = {**os.environ, "RETAILREC_DATA_DIR": str(settings.data_dir), **env}
    if settings.api_key:
        environ["RETAILREC_API_KEY"] = settings.api_key
    server = subprocess.Popen(
        [sys.executable, "-m", "retailrec", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=environ,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError(f"the API at {base} did not become ready") from None
                time.sleep(0.3)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=20)
