"""Smoke-test a running RetailRec API (a container in CI): health, readiness, an event, and a
recommendation that the event changed; with ``--container``, also that it runs as non-root.

    python3 scripts/smoke_test.py http://127.0.0.1:8000 [--container NAME --runtime podman]

Standard library only, so that it runs on a bare CI machine. Exits 1 with the reason on failure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

VISITOR = 987_654_321  # a visitor id the synthetic shops never use


def _call(url: str, body: dict[str, Any] | None = None, timeout: float = 30) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # the API under test
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _wait_ready(base: str, timeout: float) -> None:
    deadline = time.time() + timeout
    last: object = None
    while time.time() < deadline:
        try:
            status, body = _call(f"{base}/ready", timeout=5)
            if status == 200:
                return
            last = body
        except OSError as exc:
            last = exc
        time.sleep(3)
    raise SystemExit(f"smoke: {base}/ready did not answer 200 within {timeout:.0f} s: {last}")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise SystemExit(f"smoke: {message}")
    print(f"smoke: ok: {message}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--container")
    parser.add_argument("--runtime", default="podman")
    args = parser.parse_args()
    base = args.base.rstrip("/")
    _wait_ready(base, args.timeout)
    _check(_call(f"{base}/health")[0] == 200, "/health answers 200")
    status, popular = _call(f"{base}/v1/popular?k=3")
    _check(status == 200 and len(popular["items"]) == 3, "/v1/popular answers 3 items")
    item = popular["items"][0]["item_id"]
    now = int(time.time() * 1000)
    status, posted = _call(
        f"{base}/v1/events",
        {"events": [{"timestamp": now, "visitorid": VISITOR, "event": "view", "itemid": item}]},
    )
    _check(status == 200 and posted["accepted"] + posted["duplicates"] == 1, "an event is taken")
    status, recs = _call(f"{base}/v1/users/{VISITOR}/recommendations?k=5")
    _check(status == 200 and len(recs["items"]) == 5, "a recommendation answers 5 items")
    _check(recs["strategy"] != "popular", f"the event counts (strategy {recs['strategy']})")
    print(f"smoke: model version {recs['model_version']}, strategy {recs['strategy']}")
    if args.container:
        uid = subprocess.run(
            [args.runtime, "exec", args.container, "id", "-u"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        _check(uid not in ("", "0"), f"the container runs as uid {uid}, not root")
        if args.runtime == "podman":
            health = subprocess.run([args.runtime, "healthcheck", "run", args.container])
            _check(health.returncode == 0, "the image's HEALTHCHECK passes")


if __name__ == "__main__":
    try:
        main()
    except (OSError, KeyError, ValueError, subprocess.CalledProcessError) as exc:
        print(f"smoke: failed: {exc}", file=sys.stderr)
        sys.exit(1)
