"""Benchmark: ``GET /v1/users/{id}/recommendations`` under load, against a bare FastAPI "hello".

Targets (issue 5), with ``retailrec serve`` on the ``full`` synthetic shop, random known visitors,
16 connections: at least 50% of the hello endpoint's requests per second (served the same way,
measured in the same run) and a p99 of at most 15 ms. Needs ``wrk`` (Debian package).

    python bench/bench_api.py [--scale full] [--models popular_category,als] [--data DIR]

Without ``--data`` a pipeline is run first into a temporary folder (synth, etl, train, promote).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _util import report, retailrec

HELLO = """
from fastapi import FastAPI
app = FastAPI()

@app.get("/hello")
def hello() -> dict[str, str]:
    return {"hello": "world"}
"""

LUA = """
local ids = {}
for line in io.lines("%s") do ids[#ids + 1] = line end
math.randomseed(42)
request = function()
  return wrk.format("GET", "/v1/users/" .. ids[math.random(#ids)] .. "/recommendations?k=10")
end
"""


def _wait(url: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:  # loopback only
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not come up")


#: Programs that print the visitor ids wrk asks for.
VISITORS = {
    "random": "import sys, sqlite3, random; c = sqlite3.connect(sys.argv[1]);"
    " v = [r[0] for r in c.execute('SELECT DISTINCT visitorid FROM events')];"
    " random.seed(0); print('\\n'.join(map(str, random.sample(v, min(20000, len(v))))))",
    "active": "import sys, sqlite3; c = sqlite3.connect(sys.argv[1]);"
    " v = [r[0] for r in c.execute('SELECT visitorid FROM events GROUP BY visitorid"
    " ORDER BY count(*) DESC LIMIT 200')]; print('\\n'.join(map(str, v)))",
}


def _wrk(
    url: str, script: Path | None, seconds: int, connections: int, threads: int
) -> dict[str, float]:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script is not None:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        assert m, out
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": pct("50"),
        "p99_ms": pct("99"),
        "non_2xx": float(errors.group(1)) if errors else 0.0,
    }


def _rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="full")
    parser.add_argument("--models", default="popular_category,als")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--visitors",
        choices=("random", "active"),
        default="random",
        help="random known visitors, or the 200 most active ones (the longest histories)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="wrk threads: 1 leaves the server a core of its own on a 2-core machine",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    data = args.data or tmp / "data"
    env = {**os.environ, "RETAILREC_DATA_DIR": str(data), "OPENBLAS_NUM_THREADS": "1"}
    if args.data is None:
        retailrec(data, "pipeline", "--scale", args.scale, "--models", args.models)
    ids = tmp / "visitors.txt"
    subprocess.run(
        [
            sys.executable,
            "-c",
            VISITORS[args.visitors],
            str(data / "feature_store.sqlite"),
        ],
        stdout=ids.open("w"),
        check=True,
    )
    script = tmp / "random_visitor.lua"
    script.write_text(LUA % ids)
    (tmp / "hello_app.py").write_text(HELLO)
    servers = [
        subprocess.Popen(
            [sys.executable, "-m", "retailrec", "serve", "--port", "8701"],
            env=env,
            start_new_session=True,
        ),
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "hello_app:app",
                "--port",
                "8702",
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            cwd=tmp,
            env=env,
            start_new_session=True,
        ),
    ]
    try:
        _wait("http://127.0.0.1:8701/ready")
        _wait("http://127.0.0.1:8702/hello")
        t = args.threads
        _wrk("http://127.0.0.1:8701", script, 3, args.connections, t)  # warm-up
        _wrk("http://127.0.0.1:8702/hello", None, 3, args.connections, t)
        recs = _wrk("http://127.0.0.1:8701", script, args.seconds, args.connections, t)
        hello = _wrk("http://127.0.0.1:8702/hello", None, args.seconds, args.connections, t)
        rss = _rss_mib(servers[0].pid)
    finally:
        for proc in servers:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        shutil.rmtree(tmp, ignore_errors=True)
    report(
        f"api-{args.scale}" + ("-active" if args.visitors == "active" else ""),
        {
            "scale": args.scale,
            "visitors": args.visitors,
            "models": args.models,
            "connections": args.connections,
            "wrk_threads": args.threads,
            "seconds": args.seconds,
            "recommendations_rps": recs["rps"],
            "recommendations_p50_ms": recs["p50_ms"],
            "recommendations_p99_ms": recs["p99_ms"],
            "recommendations_non_2xx": recs["non_2xx"],
            "hello_rps": hello["rps"],
            "hello_p99_ms": hello["p99_ms"],
            "ratio_to_hello": round(recs["rps"] / hello["rps"], 3),
            "serve_rss_mib": round(rss),
        },
    )


if __name__ == "__main__":
    main()
