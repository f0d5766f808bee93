"""The Dockerfile's install and start commands, run in a fresh virtualenv from the built wheel.

No container daemon runs here, so the image itself is not built. Instead the
Dockerfile is read: its `COPY . .` (with .dockerignore), its `pip wheel` and
`pip install` lines and its CMD run as written, with only what an offline
machine needs added: `--no-deps --no-build-isolation` to build, `--no-deps
--no-index` to install, the dependencies taken from this checkout's .venv
(a path entry, so nothing of the checkout itself is importable), paths in a
temporary folder instead of /src, /wheels and /app.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import signal
import site
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest
import redis
import yaml

from bus import defaults
from bus.keys import Keys
from fanout.cli import build_parser
from tests.ingress_client import signed

from .conftest import REPO, TEST_REDIS_URL, TEST_SECRET
from .live import free_port, wait_for_health

pytestmark = pytest.mark.integration


def dockerfile() -> tuple[list[str], list[str]]:
    """(RUN commands, CMD argv) of the Dockerfile, continuation lines joined."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    runs = [line[4:].strip() for line in text.splitlines() if line.startswith("RUN ")]
    [cmd] = [json.loads(line[4:]) for line in text.splitlines() if line.startswith("CMD ")]
    return runs, cmd


def ignored(patterns: list[str]):  # type: ignore[no-untyped-def]
    def check(directory: str, names: list[str]) -> set[str]:
        rel = Path(directory).relative_to(REPO)
        out = set()
        for name in names:
            path = str(rel / name) if str(rel) != "." else name
            if any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(name, p.removeprefix("**/")) for p in patterns):
                out.add(name)
        return out
    return check


def run(command: list[str], **options: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, **options)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    return done  # type: ignore[no-any-return]


def test_the_dockerfile_installs_the_wheel_and_its_command_serves_the_ingress(tmp_path: Path, prefix: str) -> None:
    runs, cmd = dockerfile()
    wheel_line = next(r for r in runs if r.startswith("pip wheel "))
    install_line = next(r for r in runs if r.startswith("pip install ")).split("&&")[0].strip()

    # COPY . .  (what .dockerignore leaves)
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines() if p.strip()]
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=ignored(patterns))
    assert not (src / ".venv").exists() and not (src / "tests").exists()

    wheels = tmp_path / "wheels"
    build = shlex.split(wheel_line.replace("/wheels", str(wheels)))
    run([sys.executable, "-m", *build, "--no-deps", "--no-build-isolation"], cwd=src)
    [wheel] = wheels.glob("stripe_fanout-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for package in ("bus", "ingress", "workers", "fanout", "workers/customer", "workers/rq"):
        assert f"{package}/__init__.py" in names, package
    assert not [n for n in names if n.startswith(("tests/", "bench/", "examples/"))]

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    [venv_site] = (venv / "lib").glob("python3.*/site-packages")
    # The dependencies (not stripe-fanout itself: .pth files of that folder are not processed).
    (venv_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = shlex.split(install_line.replace("/wheels/*.whl", str(wheel)))
    assert install[:2] == ["pip", "install"]
    run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), *install[1:],
         "--no-deps", "--no-index", "--disable-pip-version-check"])

    app = tmp_path / "app"  # WORKDIR /app, COPY routing.yaml .
    app.mkdir()
    shutil.copy(REPO / "routing.yaml", app / "routing.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ROUTING_FILE", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    where = run([str(venv / "bin" / "python"), "-c", "import fanout; print(fanout.__file__)"],
                cwd=app, env=env).stdout
    assert where.startswith(str(venv_site)), where
    assert "usage: fanout" in run(["fanout", "--help"], cwd=app, env=env).stdout
    assert "--port" in run(["fanout", "ingress", "--help"], cwd=app, env=env).stdout

    port = free_port()
    env.update({"PORT": str(port), "REDIS_URL": TEST_REDIS_URL, "STRIPE_WEBHOOK_SECRET": TEST_SECRET,
                "FANOUT_PREFIX": prefix, "LOG_LEVEL": "warning"})
    log = tmp_path / "ingress.log"
    with log.open("wb") as out:
        server = subprocess.Popen(cmd, cwd=app, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        health = wait_for_health(server, port, timeout_s=20, output=log.read_text)
        assert health.status_code == 200
        body, headers = signed({"id": "evt_image_1", "object": "event", "type": "charge.refunded",
                                "created": int(time.time()), "livemode": False,
                                "data": {"object": {"id": "ch_1", "object": "charge"}}})
        answer = httpx.post(f"http://127.0.0.1:{port}{defaults.WEBHOOK_PATH}", content=body,
                            headers=headers, timeout=5)
        assert answer.status_code == 200 and answer.json()["pools"] == ["admin"], answer.text
    finally:
        server.send_signal(signal.SIGTERM)
        # uvicorn shuts down, then re-raises the SIGTERM it caught: that is its normal stop.
        assert server.wait(timeout=20) in (0, -signal.SIGTERM), log.read_text()
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        assert client.xlen(Keys(prefix).stream("admin")) == 1
    finally:
        client.close()


def test_compose_runs_redis_with_aof_the_ingress_and_a_worker_per_pool() -> None:
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    services = compose["services"]
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("--appendonly") + 1] == "yes"
    assert redis_command[redis_command.index("--maxmemory-policy") + 1] == "noeviction"
    assert "command" not in services["ingress"]  # the image's CMD: the ingress
    pools = yaml.safe_load((REPO / "routing.yaml").read_text())["pools"]
    for pool in pools:
        command = services[pool]["command"]
        assert command == ["fanout", "worker", pool]
        build_parser().parse_args(command[1:])
        assert services[pool]["environment"]["REDIS_URL"] == "redis://redis:6379/0"
