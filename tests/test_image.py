"""The container image, built and run as users run it: compose up, send, resend, health, stop.

The image test builds the Dockerfile and brings up the project's own
``docker-compose.yml`` with podman and podman-compose (Docker's files, a
daemonless engine), sends the example set from the host with dcmtk's
storescu over loopback, and checks the data volume, the events, both
HEALTHCHECKs and the stop. Marked ``image`` and ``slow``: the fast loop
leaves it out, the README's test command (and so CI) runs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from watcher._settings import WORKER_MEMORY, default_workers

from .dcmtk import _port_open, require_dcmtk, storescu
from .helpers import BIN, get, wait_for
from .test_transfer_syntaxes import PROPOSE, compressed_examples

# -- the worker count within a container's limits ----------------------------------


def _cgroup(tmp_path: Path, cpu: str, memory: str) -> Path:
    (tmp_path / "cpu.max").write_text(cpu + "\n")
    (tmp_path / "memory.max").write_text(memory + "\n")
    return tmp_path


@pytest.mark.parametrize(
    ("cpu", "memory", "expected"),
    [
        ("max 100000", "max", 2),  # no limits: every core (this machine has 2)
        ("50000 100000", "max", 1),  # half a core
        ("max 100000", str(3 * WORKER_MEMORY), 2),  # room for 2 beside the service
        ("max 100000", str(WORKER_MEMORY), 1),  # never fewer than one
    ],
)
def test_the_default_worker_count_keeps_within_the_container_limits(
    tmp_path: Path, cpu: str, memory: str, expected: int
) -> None:
    assert default_workers(_cgroup(tmp_path, cpu, memory)) == min(expected, default_workers())


# -- the image, built and run through the compose file ------------------------------

ROOT = Path(__file__).resolve().parent.parent
#: The image the compose file (and the manifest) run: its tag is the project's version.
IMAGE = next(
    line.split("image:", 1)[1].strip()
    for line in (ROOT / "docker-compose.yml").read_text().splitlines()
    if line.strip().startswith("image: pypx-listener:")
)
SHARED_CONTAINER = ROOT.parent / "shared" / "container"
BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
DICOM_PORT, METRICS_PORT = 11113, 9100  # as the compose file publishes them


def _needed(what: str) -> None:
    message = f"{what}: install podman, runc and podman-compose (the README's test command does)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def engine() -> dict[str, str]:
    """The environment podman and podman-compose run in, with the base image present."""
    if shutil.which("podman") is None:
        _needed("no podman")
    compose = BIN / "podman-compose"
    if not compose.exists():
        _needed("no podman-compose beside the interpreter")
    env = {**os.environ, "BUILDAH_FORMAT": "docker"}  # OCI images drop HEALTHCHECK
    if (SHARED_CONTAINER / "containers.conf").exists():  # this machine's podman settings
        env["CONTAINERS_CONF"] = str(SHARED_CONTAINER / "containers.conf")
    exists = subprocess.run(["podman", "image", "exists", BASE_IMAGE], env=env, check=False)
    if exists.returncode != 0:
        # No image registry here: a stand-in made by debootstrap, the same packages.
        maker = SHARED_CONTAINER / "make-base-images.sh"
        command = ["bash", str(maker)] if maker.exists() else ["podman", "pull", BASE_IMAGE]
        made = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900,
                              check=False)  # fmt: skip
        assert made.returncode == 0, made.stdout[-2000:] + made.stderr[-2000:]
    return env


def _build_arguments(scratch: Path) -> str:
    """podman build arguments for a machine whose pip trusts a proxy's certificate.

    The certificate and a pip.conf naming it are given as build secrets (see
    the Dockerfile): mounted for the install step alone, never in the image.
    """
    config = Path("/etc/pip.conf")
    cert = None
    if config.exists():
        for line in config.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "cert" and Path(value.strip()).exists():
                cert = value.strip()
    if cert is None:
        return ""
    pip_conf = scratch / "pip.conf"
    pip_conf.write_text("[global]\ncert = /run/secrets/ca.crt\n")
    return f"--secret id=pip.conf,src={pip_conf} --secret id=ca.crt,src={cert}"


class Compose:
    """The project's docker-compose.yml under podman-compose, as a project of its own."""

    def __init__(self, env: dict[str, str], project: str) -> None:
        self.env = env
        self.project = project
        self.base = [
            str(BIN / "podman-compose"),
            "-p",
            project,
            "-f",
            str(ROOT / "docker-compose.yml"),
        ]
        self.lines: list[str] = []
        self._follower: subprocess.Popen[str] | None = None
        self._reader = threading.Thread()

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*self.base, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip
        assert done.returncode == 0, (
            f"podman-compose {args}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
        return done

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def follow(self, service: str) -> None:
        """Collect the service's log lines (its events) as they come."""
        self._follower = subprocess.Popen(
            ["podman", "logs", "-f", self.container(service)], env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        stdout = self._follower.stdout
        assert stdout is not None
        self._reader = threading.Thread(target=lambda: self.lines.extend(stdout), daemon=True)
        self._reader.start()

    def events(self, name: str) -> list[dict[str, Any]]:
        found = []
        for line in list(self.lines):
            if line.startswith("{"):
                event = orjson.loads(line)
                if event.get("event") == name:
                    found.append(event)
        return found

    def volume(self, name: str) -> Path:
        shown = subprocess.run(
            ["podman", "volume", "inspect", f"{self.project}_{name}", "--format",
             "{{.Mountpoint}}"], env=self.env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        return Path(shown.stdout.strip())

    def inspect_image(self) -> dict[str, Any]:
        command = ["podman", "image", "inspect", IMAGE]
        shown = subprocess.run(command, env=self.env, capture_output=True, check=True, timeout=60)
        image: dict[str, Any] = orjson.loads(shown.stdout)[0]
        return image

    def healthy(self, service: str) -> bool:
        command = ["podman", "healthcheck", "run", self.container(service)]
        checked = subprocess.run(
            command, env=self.env, capture_output=True, check=False, timeout=60
        )
        return checked.returncode == 0

    def close(self) -> None:
        subprocess.run([*self.base, "down", "-v"], env=self.env, capture_output=True,
                       timeout=120, check=False)  # fmt: skip
        if self._follower is not None:
            self._follower.kill()
            self._follower.wait(10)
            self._reader.join(10)
            if self._follower.stdout is not None:
                self._follower.stdout.close()


@pytest.mark.image
@pytest.mark.dcmtk
@pytest.mark.slow
def test_the_image_under_compose_receives_resends_reports_health_and_stops_cleanly(
    engine: dict[str, str], example_files: list[Path], tmp_path: Path
) -> None:
    """docker-compose.yml as users run it: build, up, 192 instances from the host over
    loopback, 10 of them again (incoming and data are separate volumes), both
    HEALTHCHECKs, one file per compressed transfer syntax, then down in under 5 s
    with a clean watcher.stopped."""
    require_dcmtk()
    compose = Compose(engine, f"pypxtest{os.getpid()}")
    try:
        compose.run("--podman-build-args", _build_arguments(tmp_path), "build", timeout=900)
        compose.run("up", "-d", timeout=300)
        compose.follow("pypx-listener")
        wait_for(lambda: _port_open(DICOM_PORT), 60, "storescp's port")
        wait_for(lambda: len(compose.events("watcher.started")) == 1, 60, "watcher.started")
        storescu(DICOM_PORT, example_files)
        wait_for(lambda: len(compose.events("repack.done")) == 192, 120, "192 repack.done")
        storescu(DICOM_PORT, example_files[:10])  # sent again: a new file, the same place
        wait_for(lambda: len(compose.events("repack.done")) == 202, 60, "202 repack.done")
        assert compose.events("repack.retry") == []
        assert compose.events("repack.failed") == []
        data, log = compose.volume("data"), compose.volume("log")
        assert len(list(data.rglob("*.dcm"))) == 192
        assert len(list(log.glob("seriesData/*-img/*.json"))) == 192
        assert {(p.stat().st_uid, p.stat().st_gid) for p in data.rglob("*.dcm")} == {(10001, 10001)}
        assert list(compose.volume("incoming").rglob("MR.*")) == []
        assert get(f"http://127.0.0.1:{METRICS_PORT}/healthz")[0] == 200
        assert compose.healthy("storescp")
        assert compose.healthy("pypx-listener")
        # The README's log recipe: without colour codes, every line is one JSON event.
        logs = compose.run("logs", "--no-log-prefix", "--no-color", "pypx-listener").stdout
        events = [orjson.loads(line) for line in logs.splitlines() if line.strip()]
        assert sum(event["event"] == "repack.done" for event in events) == 202
        # No VOLUME (anonymous volumes for every container), nothing of the build left.
        image = compose.inspect_image()
        assert not image["Config"].get("Volumes")
        assert image["Config"]["User"] == "10001:10001"
        leftovers = subprocess.run(
            ["podman", "run", "--rm", "--entrypoint", "sh", IMAGE, "-c",
             "ls -d /wheels /etc/pip.conf /run/secrets /opt/pypx-listener/bin/pip 2>/dev/null"],
            env=engine, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert leftovers.stdout.strip() == ""
        # What PACSes send: each compressed transfer syntax, proposed as its own.
        compressed = compressed_examples()
        for number, (syntax, path) in enumerate(compressed.items(), start=203):
            storescu(DICOM_PORT, [path], "-R", PROPOSE[syntax])
            wait_for(lambda n=number: len(compose.events("repack.done")) == n, 60, path.name)
        assert compose.events("repack.failed") == []
        started = time.monotonic()
        compose.run("down", timeout=120)
        took = time.monotonic() - started
        wait_for(lambda: len(compose.events("watcher.stopped")) == 1, 10, "watcher.stopped")
        (stopped,) = compose.events("watcher.stopped")
        assert stopped["clean"] is True
        assert stopped["repacked"] == 202 + len(compressed)
        assert took < 5, f"compose down took {took:.1f} s"
    finally:
        compose.close()


# -- the Kubernetes manifest ----------------------------------------------------------

MANIFEST = ROOT / "deploy" / "kubernetes.yaml"


def test_the_kubernetes_manifest_is_valid_against_the_api_schemas() -> None:
    checked = subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", str(MANIFEST)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.image
@pytest.mark.slow
def test_the_kubernetes_manifest_runs_under_podman_kube_play(
    engine: dict[str, str], tmp_path: Path
) -> None:
    """The pod as the manifest has it (restricted security context, read-only root file
    system, tini as PID 1): both containers healthy, and a stop that is quick and clean."""
    build = [
        "podman", "build", "--format", "docker", "-t", IMAGE,
        *_build_arguments(tmp_path).split(), str(ROOT),
    ]  # fmt: skip
    built = subprocess.run(build, env=engine, capture_output=True, text=True, timeout=900,
                           check=False)  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]

    def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["podman", *args], env=engine, capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip

    def clean_up() -> None:
        podman("kube", "down", str(MANIFEST))
        podman("volume", "rm", "-f", "pypx-data")

    clean_up()
    try:
        played = podman("kube", "play", str(MANIFEST), timeout=300)
        assert played.returncode == 0, played.stdout + played.stderr
        pod = "pypx-listener-pod-0"
        for container in ("storescp", "pypx-listener"):
            name = f"{pod}-{container}"
            # The image's own HEALTHCHECK (kube play turns the manifest's probes into
            # podman healthchecks of its own, with tools the image does not have).
            wait_for(lambda n=name: podman("exec", n, "pypx-healthcheck").returncode == 0, 60,
                     f"{container} healthy")  # fmt: skip
            init = podman("exec", name, "cat", "/proc/1/cmdline").stdout.split("\0")
            assert init[:3] == ["/usr/bin/tini", "-g", "--"]
            assert "Read-only file system" in podman("exec", name, "touch", "/x").stderr
        started = time.monotonic()
        assert podman("pod", "stop", pod).returncode == 0
        took = time.monotonic() - started
        lines = podman("logs", f"{pod}-pypx-listener").stdout.splitlines()
        stopped = [orjson.loads(line) for line in lines if '"watcher.stopped"' in line]
        assert [event["clean"] for event in stopped] == [True]
        assert took < 5, f"the pod took {took:.1f} s to stop"
    finally:
        clean_up()


@pytest.mark.image
@pytest.mark.slow
def test_the_image_hands_a_series_to_cube(
    engine: dict[str, str], tmp_path: Path, example_files: list[Path]
) -> None:
    """The image has the chris extra: it registers a series through a Redis on the host."""
    import tempfile  # noqa: PLC0415

    from .brokers import cube_worker, redis_server  # noqa: PLC0415

    build = ["podman", "build", "--format", "docker", "-t", IMAGE,
             *_build_arguments(tmp_path).split(), str(ROOT)]  # fmt: skip
    built = subprocess.run(build, env=engine, capture_output=True, text=True, timeout=900,
                           check=False)  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    # The container's user (10001) must reach the folders: a shared one outside pytest's own.
    shared = Path(tempfile.mkdtemp(prefix="pypx-image-"))
    name = f"pypx-handoff-{os.getpid()}"
    try:
        for folder in ("incoming", "cube/SERVICES/PACS/PYPXIMG", "log", "quarantine"):
            (shared / folder).mkdir(parents=True)
        for folder in [shared, *shared.rglob("*")]:
            folder.chmod(0o777)
        with redis_server(tmp_path / "redis") as redis:
            broker = f"redis://127.0.0.1:{redis.port}/0"
            with cube_worker(broker, shared / "cube", tmp_path / "registered.jsonl") as worker:
                run = subprocess.run(
                    ["podman", "run", "-d", "--name", name, "--network", "host",
                     "-v", f"{shared}:/shared", IMAGE, "pypx-listener", "--incoming",
                     "/shared/incoming",
                     "--datadir", "/shared/cube/SERVICES/PACS/PYPXIMG", "--logdir",
                     "/shared/log", "--quarantine", "/shared/quarantine", "--pacs-name",
                     "PYPXIMG", "--celery-broker", broker, "--series-quiet", "1",
                     "--settle", "0.5", "--metrics-port", "0"],
                    env=engine, capture_output=True, text=True, timeout=120, check=False,
                )  # fmt: skip
                assert run.returncode == 0, run.stderr
                for path in example_files[:7]:
                    staged = shared / f".{path.name}"
                    staged.write_bytes(path.read_bytes())
                    staged.rename(shared / "incoming" / path.name)
                wait_for(lambda: len(worker.registered()) == 1, 120, "CUBE's registration")
        (registered,) = worker.registered()
        assert registered["ndicom"] == 7
        assert registered["path"].startswith("SERVICES/PACS/PYPXIMG/")
    finally:
        logs = subprocess.run(["podman", "logs", name], env=engine, capture_output=True,
                              text=True, timeout=60, check=False)  # fmt: skip
        subprocess.run(["podman", "rm", "-f", "-t", "5", name], env=engine, capture_output=True,
                       timeout=120, check=False)  # fmt: skip
        shutil.rmtree(shared, ignore_errors=True)
    assert '"handoff.sent"' in logs.stdout
