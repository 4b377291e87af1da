"""The deployment files, checked here: Dockerfile (hadolint), workflows and compose file (their
JSON schemas), and the Render blueprint (the fields Render requires, and that what they name
exists in this repository). Building and running the image is ``make container-test``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml

from retailrec.api.main import create_app
from retailrec.cli import app as cli_app

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = [ROOT / ".github" / "workflows" / name for name in ("main.yml", "retrain.yml")]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert found, f"{name} is pinned in requirements-dev.txt: run `make venv`"
    return found


def _validates(schema: str, path: Path) -> None:
    result = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", schema, str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _compose_services() -> dict[str, Any]:
    """docker-compose.yml's services as compose runs them with no overrides set: each
    ``${NAME:-default}`` is its default (the images and host ports are overridable)."""
    text = (ROOT / "docker-compose.yml").read_text()
    return dict(yaml.safe_load(re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", text))["services"])


def _cli_accepts(command: str) -> None:
    """A ``retailrec ...`` command line names a real command and real options."""
    words = command.split()
    assert words[0] == "retailrec", command
    group = typer.main.get_command(cli_app)
    sub = group.commands[words[1]]  # type: ignore[attr-defined]
    options = {opt for p in sub.params for opt in p.opts}
    for word in words[2:]:
        if word.startswith("--"):
            assert word.split("=")[0] in options, f"{command}: no option {word}"


#: The image, and the stand-ins for the official images that `make compose-test` builds.
CONTAINERFILES = [ROOT / "Dockerfile", *sorted((ROOT / "deploy" / "standins").glob("*file"))]


@pytest.mark.parametrize("path", CONTAINERFILES, ids=lambda p: p.name)
def test_hadolint_passes(path: Path) -> None:
    result = subprocess.run([_tool("hadolint"), str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_standins_keep_the_official_images_contract() -> None:
    """compose_test.sh replaces postgres:15 and nginx with these: they must take what
    docker-compose.yml gives the official images."""
    services = _compose_services()
    postgres = (ROOT / "deploy" / "standins" / "postgres.Containerfile").read_text()
    entry = (ROOT / "deploy" / "standins" / "postgres-entrypoint.sh").read_text()
    assert "postgresql-15" in postgres and "PGDATA=/var/lib/postgresql/data" in postgres
    assert "pgdata:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    for name in services["postgres"]["environment"]:
        assert name in entry, name
    assert "--encoding=UTF8" in entry  # as the official image; not SQL_ASCII
    assert (
        subprocess.run(
            ["sh", "-n", str(ROOT / "deploy/standins/postgres-entrypoint.sh")]
        ).returncode
        == 0
    )
    nginx = (ROOT / "deploy" / "standins" / "nginx.Containerfile").read_text()
    mount = services["lb"]["volumes"][0].split(":")[1]
    assert mount.startswith("/etc/nginx/conf.d/") and "sites-enabled/default" in nginx


def test_dockerfile_meets_the_brief() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2  # multi-stage
    assert re.search(r"^USER (?!0\b|root\b)\S+", text, re.M)  # non-root
    assert "OPENBLAS_NUM_THREADS=1" in text and "libgomp1" in text
    assert re.search(r"^HEALTHCHECK .*?/health", text, re.M | re.S)
    assert re.search(r'^VOLUME \["/data"\]', text, re.M)
    assert "RETAILREC_DATA_DIR=/data" in text
    assert "torch==" in text  # filtered out unless WITH_TORCH=1
    cmd = re.search(r"^CMD \[(.*)\]$", text, re.M)
    assert cmd is not None
    _cli_accepts(" ".join(w.strip().strip('"') for w in cmd.group(1).split(",")))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_validate_and_follow_the_rules(path: Path) -> None:
    _validates("vendor.github-workflows", path)
    flow = _load(path)
    assert flow["permissions"] == {"contents": "read"}  # least privilege by default
    for name, job in flow["jobs"].items():
        assert isinstance(job.get("timeout-minutes"), int), f"{name} has no timeout"
        for step in job["steps"]:
            if "uses" in step:
                assert re.search(r"@(v\d+\.\d+\.\d+|[0-9a-f]{40})$", step["uses"]), step["uses"]
            for line in str(step.get("run", "")).splitlines():
                match = re.search(r"\.venv/bin/(retailrec [^;&|]*)", line)
                if match:
                    _cli_accepts(re.sub(r"\$\{[^}]*\}", "", match.group(1)).strip())


def test_main_workflow_tests_builds_and_deploys() -> None:
    flow = _load(WORKFLOWS[0])
    triggers = flow[True]  # YAML reads the key `on` as True
    assert {"push", "pull_request"} <= set(triggers)
    runs = "\n".join(s.get("run", "") for j in flow["jobs"].values() for s in j["steps"])
    assert "make lint" in runs and "make test" in runs
    assert "docker build" in runs and "scripts/smoke_test.py" in runs
    deploy = flow["jobs"]["deploy"]
    assert "refs/heads/main" in deploy["if"] and set(deploy["needs"]) == {"test", "image"}
    assert deploy["permissions"]["packages"] == "write"
    assert "ghcr.io" in runs and "secrets.RENDER_DEPLOY_HOOK_URL" in (WORKFLOWS[0]).read_text()


def test_retrain_workflow_is_scheduled_and_publishes_the_report() -> None:
    flow = _load(WORKFLOWS[1])
    assert {"schedule", "workflow_dispatch"} <= set(flow[True])
    text = WORKFLOWS[1].read_text()
    assert "retailrec monitor --retrain" in text
    assert "actions/upload-artifact" in text and "data/reports/" in text


def test_compose_file_validates_and_shares_the_data_volume() -> None:
    path = ROOT / "docker-compose.yml"
    _validates("vendor.compose-spec", path)
    services = _compose_services()
    assert set(services) == {"api", "dashboard", "mlflow", "worker", "api-2", "postgres", "lb"}
    ours = {n: s for n, s in services.items() if s.get("image") == "retailrec:latest"}
    assert set(ours) == {"api", "dashboard", "mlflow", "worker", "api-2"}
    for name, service in ours.items():
        assert "data:/data" in service["volumes"], name
        if service["command"][0] == "retailrec":
            _cli_accepts(" ".join(service["command"]))
    assert "--retrain" in services["worker"]["command"]
    # Only the API is published to other machines; the dashboard and the MLflow UI (which can
    # move the champion alias) are published on this machine's loopback alone.
    assert services["api"]["ports"] == ["8000:8000"]
    assert services["dashboard"]["ports"] == ["127.0.0.1:8501:8501"]
    assert services["mlflow"]["ports"] == ["127.0.0.1:5000:5000"]


def test_the_replicas_profile_puts_two_apis_on_postgresql_behind_a_balancer() -> None:
    services = _compose_services()
    profile = {n for n, s in services.items() if "replicas" in s.get("profiles", [])}
    assert profile == {"api-2", "postgres", "lb"}
    assert "--bootstrap" not in services["api-2"]["command"]  # the first replica trains
    assert services["api"]["depends_on"]["postgres"]["required"] is False
    assert services["postgres"]["image"].startswith("postgres:15")
    assert "POSTGRES_PASSWORD:?" in (ROOT / "docker-compose.yml").read_text()  # never a default
    mount = services["lb"]["volumes"][0].split(":")[0]
    conf = (ROOT / mount).read_text()
    assert "server api:8000" in conf and "server api-2:8000" in conf
    assert services["lb"]["ports"] == ["8080:8080"]
    assert services["api-2"]["ports"] == ["127.0.0.1:8001:8000"]  # this machine only


#: What Render needs per service type (https://render.com/docs/blueprint-spec).
SERVICE_TYPES = {"web", "worker", "pserv", "cron", "static", "keyvalue"}
ENV_SOURCES = {"value", "generateValue", "sync", "fromService", "fromDatabase", "fromGroup"}


def test_render_blueprint_has_what_render_requires() -> None:
    blueprint = _load(ROOT / "render.yaml")
    groups = {g["name"]: g for g in blueprint.get("envVarGroups", [])}
    services = blueprint["services"]
    names = {s["name"] for s in services}
    assert len(names) == len(services)
    for service in services:
        assert service["type"] in SERVICE_TYPES
        assert service["runtime"] == "docker"
        assert (ROOT / service.get("dockerfilePath", "./Dockerfile")).is_file()
        for env in service.get("envVars", []):
            sources = ENV_SOURCES & set(env)
            assert len(sources) == 1, env
            if "fromGroup" in env:
                assert env["fromGroup"] in groups
                continue
            assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", env["key"])
            if env["key"] == "RETAILREC_API_KEY":
                assert "value" not in env  # a secret, never written in the repository
            if "fromService" in env:
                assert env["fromService"]["name"] in names
    secrets = [v for g in groups.values() for v in g["envVars"]]
    assert {"key": "RETAILREC_API_KEY", "generateValue": True} in secrets

    web = next(s for s in services if s["type"] == "web")
    assert web["healthCheckPath"] in create_app(load_model=False).openapi()["paths"]
    disk = web["disk"]
    assert {"name", "mountPath", "sizeGB"} <= set(disk) and disk["sizeGB"] >= 1
    assert disk["mountPath"] == "/data"  # the image's VOLUME and RETAILREC_DATA_DIR
    assert web.get("plan", "free") != "free"  # Render attaches disks to paid instances only

    cron = next(s for s in services if s["type"] == "cron")
    assert len(cron["schedule"].split()) == 5
    _cli_accepts(cron["dockerCommand"])
    keys = {e.get("key") for e in cron["envVars"]}
    assert "RETAILREC_API_URL" in keys
