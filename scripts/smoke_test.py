"""Smoke-test a running RetailRec API (a container in CI): health, readiness, an event, and a
recommendation that the event changed; with ``--container``, also that it runs as non-root.
With ``--replica``, the same service's other replicas (one store): an event posted to one counts
in the next answer of another, and, with ``--api-key --reload-to V``, a reload on the first
replica reaches the others.

    python3 scripts/smoke_test.py http://127.0.0.1:8000 [--container NAME --runtime podman]
        [--replica http://127.0.0.1:8001 ... --api-key KEY --reload-to VERSION]

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


def _call(
    url: str,
    body: dict[str, Any] | None = None,
    timeout: float = 30,
    key: str | None = None,
    method: str | None = None,
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} | ({"X-API-Key": key} if key else {})
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
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


def _shop_ms(base: str) -> int:
    """The shop's time as the served model knows it (the end of its training data), for events
    that belong to the shop's log: the wall clock would date them years past an old log."""
    status, model = _call(f"{base}/v1/model")
    if status != 200 or not model.get("data_end_ms"):
        raise SystemExit(f"smoke: {base}/v1/model gives no data_end_ms: {model}")
    return int(model["data_end_ms"])


def _view(base: str, visitor: int, item: int, at: int) -> None:
    status, posted = _call(
        f"{base}/v1/events",
        {"events": [{"timestamp": at, "visitorid": visitor, "event": "view", "itemid": item}]},
    )
    taken = posted["accepted"] + posted["duplicates"] if status == 200 else 0
    _check(taken == 1, f"{base} takes an event")


def _replicas(
    bases: list[str], item: int, at: int, key: str | None, reload_to: str | None, poll_s: float
) -> None:
    """Each replica's event counts in the next answer of the next one; a reload of the first
    ``--replica`` to ``reload_to`` reaches all the others within the reload poll."""
    for n, (writer, reader) in enumerate(zip(bases, bases[1:] + bases[:1], strict=True)):
        visitor = VISITOR + 1 + n
        status, before = _call(f"{reader}/v1/users/{visitor}/recommendations?k=5")
        _check(status == 200 and before["strategy"] == "popular", f"{reader}: a new visitor")
        _view(writer, visitor, item, at)
        status, recs = _call(f"{reader}/v1/users/{visitor}/recommendations?k=5")
        _check(
            status == 200 and recs["strategy"] != "popular",
            f"an event posted to {writer} counts at {reader} (strategy {recs['strategy']})",
        )
    if reload_to is None:
        return
    # The reload goes to the first replica; the others must follow, one of them from another
    # version (else following could not be told from never having moved).
    on, others = bases[1], [bases[0], *bases[2:]]
    before = {base: _call(f"{base}/v1/model")[1]["version"] for base in bases[2:]}
    _check(any(v != reload_to for v in before.values()), f"before the reload: versions {before}")
    status, reloaded = _call(f"{on}/v1/admin/reload?version={reload_to}", key=key, method="POST")
    _check(status == 200 and reloaded["announced"], f"a reload to {reload_to} on {on} is announced")
    deadline = time.time() + poll_s + 10
    for base in others:
        while (version := _call(f"{base}/v1/model")[1]["version"]) != reload_to:
            if time.time() > deadline:
                raise SystemExit(f"smoke: {base} serves version {version}, not {reload_to}")
            time.sleep(0.5)
        _check(True, f"{base} followed the reload to version {version}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--container")
    parser.add_argument("--runtime", default="podman")
    parser.add_argument("--replica", action="append", default=[])
    parser.add_argument("--api-key")
    parser.add_argument("--reload-to", help="with --replica and --api-key: a version to load")
    parser.add_argument("--reload-poll-s", type=float, default=2)
    args = parser.parse_args()
    base = args.base.rstrip("/")
    _wait_ready(base, args.timeout)
    _check(_call(f"{base}/health")[0] == 200, "/health answers 200")
    status, popular = _call(f"{base}/v1/popular?k=3")
    _check(status == 200 and len(popular["items"]) == 3, "/v1/popular answers 3 items")
    item = popular["items"][0]["item_id"]
    at = _shop_ms(base)
    _view(base, VISITOR, item, at)
    status, recs = _call(f"{base}/v1/users/{VISITOR}/recommendations?k=5")
    _check(status == 200 and len(recs["items"]) == 5, "a recommendation answers 5 items")
    _check(recs["strategy"] != "popular", f"the event counts (strategy {recs['strategy']})")
    print(f"smoke: model version {recs['model_version']}, strategy {recs['strategy']}")
    if args.replica:
        replicas = [r.rstrip("/") for r in args.replica]
        for replica in replicas:
            _wait_ready(replica, args.timeout)
        _replicas([base, *replicas], item, at, args.api_key, args.reload_to, args.reload_poll_s)
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
