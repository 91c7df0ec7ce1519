"""Operations: metrics, health, supervised storescp, and the container's own commands."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import ROOT
from .dcmtk import free_port, require_dcmtk, stop_group, storescu
from .helpers import get, installed, metric, remount, small_filesystem, wait_for
from .listener import Listener, listener


def test_metrics_during_an_ingest(tmp_path: Path, example_files: list[Path]) -> None:
    port = free_port()
    args = ("--metrics-port", str(port), "--metrics-host", "127.0.0.1", "--settle", "0.3",
            "--quarantine-after", "1")  # fmt: skip
    with listener(tmp_path, *args) as running:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: get(base + "/healthz")[0] == 200, 20, "/healthz")
        for path in example_files[:30]:
            shutil.copy(path, running.incoming / path.stem)
        (running.incoming / "junk.bin").write_bytes(b"not dicom" * 50)
        running.wait_for(
            lambda: running.count("repack.done") == 30 and running.count("repack.failed") == 1,
            60,
            "the ingest",
        )
        status, text = get(base + "/metrics")
        assert status == 200
        assert metric(text, "pypx_listener_instances_repacked_total") == 30
        assert metric(text, "pypx_listener_instances_quarantined_total", 'reason="not-dicom"') == 1
        assert metric(text, "pypx_listener_repack_seconds_count") == 30
        assert metric(text, "pypx_listener_bytes_repacked_total") == sum(
            p.stat().st_size for p in example_files[:30]
        )
        # Everything is done: nothing waits (the gauges are updated twice a second).
        wait_for(
            lambda: metric(get(base + "/metrics")[1], "pypx_listener_queue_depth") == 0,
            5,
            "an empty queue",
        )
        assert metric(text, "pypx_listener_oldest_unprocessed_seconds") == 0
        assert "pypx_listener_series_completed_total" in text
        status, body = get(base + "/readyz")
        assert status == 200
        assert json.loads(body) == {"ready": True, "problems": []}
        assert get(base + "/nothing")[0] == 404
        assert running.stop() == 0


@pytest.mark.slow
def test_readyz_turns_unready_when_the_data_folder_is_not_writable(tmp_path: Path) -> None:
    port = free_port()
    with small_filesystem(tmp_path / "small") as small:
        args = ("--datadir", str(small / "data"), "--logdir", str(small / "log"),
                "--metrics-port", str(port), "--metrics-host", "127.0.0.1")  # fmt: skip
        with listener(tmp_path, *args) as running:
            ready = f"http://127.0.0.1:{port}/readyz"
            wait_for(lambda: get(ready)[0] == 200, 20, "ready")
            remount(small, "ro")
            try:
                status, body = get(ready)
                assert status == 503
                problems = json.loads(body)["problems"]
                assert any("datadir" in p and "not writable" in p for p in problems)
            finally:
                remount(small, "rw")
            assert get(ready)[0] == 200
            assert running.stop() == 0


def _storescp_processes(port: int) -> list[str]:
    found = subprocess.run(["pgrep", "-f", f"storescp .* {port}$"], capture_output=True,
                           text=True, check=False)  # fmt: skip
    return found.stdout.split()


@pytest.mark.dcmtk
@pytest.mark.slow
def test_supervised_storescp_receives_repacks_and_leaves_nothing_behind(
    tmp_path: Path, example_files: list[Path]
) -> None:
    require_dcmtk()
    port, metrics = free_port(), free_port()
    args = (
        *("--storescp-port", str(port), "--storescp-args", "--fork -pm -sp"),
        *("--metrics-port", str(metrics), "--metrics-host", "127.0.0.1", "--settle", "0.3"),
    )
    with listener(tmp_path, *args, env={"TCP_NODELAY": "1"}) as running:
        ready = f"http://127.0.0.1:{metrics}/readyz"
        wait_for(lambda: get(ready)[0] == 200, 30, "storescp to be up and /readyz ready")
        assert _storescp_processes(port)
        storescu(port, example_files)
        running.wait_for(lambda: running.count("repack.done") == 192, 120, "192 repack.done")
        (started,) = running.of("storescp.started")
        assert "--fork" in started["command"]
        assert running.stop() == 0
    assert running.count("storescp.stopped") == 1
    wait_for(lambda: not _storescp_processes(port), 10, "no storescp left")
    assert len(running.data_files()) == 192


@pytest.mark.dcmtk
@pytest.mark.slow
def test_supervised_storescp_is_restarted_when_it_dies(tmp_path: Path) -> None:
    require_dcmtk()
    port = free_port()
    with listener(tmp_path, "--storescp-port", str(port), env={"TCP_NODELAY": "1"}) as running:
        running.wait_for(lambda: running.count("storescp.started") == 1, 20, "storescp")
        os.kill(running.of("storescp.started")[0]["pid"], 9)
        running.wait_for(lambda: running.count("storescp.started") == 2, 20, "a restart")
        assert running.count("storescp.exited") == 1
        assert running.stop() == 0
    wait_for(lambda: not _storescp_processes(port), 10, "no storescp left")


# -- the container's own commands, run here ---------------------------------


def _remap(value: str, root: Path, ports: dict[str, str]) -> str:
    value = value.replace("/srv/", f"{root}/srv/")
    for old, new in ports.items():
        value = re.sub(rf"\b{old}\b", new, value)
    return value


def _dockerfile() -> tuple[list[str], list[str], dict[str, str], list[str]]:
    """The final stage's ENTRYPOINT, CMD, ENV (but PATH, the image's own) and HEALTHCHECK."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    text = text[text.rindex("\nFROM ") :]
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.MULTILINE).group(1))  # type: ignore[union-attr]
    command = json.loads(re.search(r"^CMD (\[.*\])$", text, re.MULTILINE).group(1))  # type: ignore[union-attr]
    health = json.loads(
        re.search(r"^HEALTHCHECK .*?CMD (\[.*\])$", text, re.MULTILINE).group(1)  # type: ignore[union-attr]
    )
    env: dict[str, str] = {}
    for block in re.findall(r"^ENV (.*)$", text, re.MULTILINE):
        for pair in shlex.split(block):
            key, _, value = pair.partition("=")
            env[key] = value
    env.pop("PATH", None)
    return entrypoint, command, env, health


@pytest.mark.dcmtk
@pytest.mark.slow
def test_compose_and_dockerfile_commands_work_as_written(
    tmp_path: Path, example_files: list[Path]
) -> None:
    """Run the compose services' commands and environment (paths under tmp)."""
    require_dcmtk()
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    dicom_port, metrics_port = str(free_port()), str(free_port())
    ports = {"11113": dicom_port, "9100": metrics_port}
    for folder in ("incoming", "data", "log", "quarantine"):
        (tmp_path / "srv" / folder).mkdir(parents=True)
    services = compose["services"]
    scp = services["storescp"]
    scp_command = [_remap(part, tmp_path, ports) for part in scp["command"]]
    scp_env = {k: str(v) for k, v in scp["environment"].items()}
    sidecar = services["pypx-listener"]
    # One image, built once: the storescp service builds it, the sidecar uses it.
    assert [name for name, service in services.items() if "build" in service] == ["storescp"]
    assert scp["image"] == sidecar["image"]
    assert sidecar["pull_policy"] == "never"
    entrypoint, docker_cmd, docker_env, health = _dockerfile()
    assert Path(entrypoint[0]).name == "tini"  # storescp as PID 1 would ignore SIGTERM
    assert sidecar["command"] == docker_cmd  # the compose sidecar runs the image's CMD
    env = {**docker_env, **{k: str(v) for k, v in sidecar["environment"].items()}}
    env = {k: _remap(v, tmp_path, ports) for k, v in env.items()}
    # Each under the image's init, as in its container: the HEALTHCHECK is given
    # the init's pid (its PID 1) and must check the program the init runs.
    storescp_process = subprocess.Popen(
        [*entrypoint, *scp_command], env={**os.environ, **scp_env}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        running = Listener(tmp_path, env=env)
        running.command = [*entrypoint, installed(docker_cmd[0]), *docker_cmd[1:]]
        running.start()
        try:
            assert running.of("watcher.started")[0]["incoming"] == f"{tmp_path}/srv/incoming"
            # The image's one HEALTHCHECK, as written, for each program the image runs
            # (--pid: here the init is not PID 1, as it is in its container).
            assert health == ["pypx-healthcheck"]
            health_env = {**os.environ, **env}

            def healthy(pid: int) -> bool:
                command = [installed(health[0]), *health[1:], "--pid", str(pid)]
                checked = subprocess.run(command, env=health_env, check=False,
                                         capture_output=True, text=True, timeout=30)  # fmt: skip
                return checked.returncode == 0

            assert running.process is not None
            wait_for(lambda: healthy(running.process.pid), 20, "the sidecar's HEALTHCHECK")
            wait_for(lambda: _storescp_processes(int(dicom_port)) != [], 10, "storescp")
            wait_for(lambda: healthy(storescp_process.pid), 20, "storescp's HEALTHCHECK")
            storescu(int(dicom_port), example_files[:40])
            running.wait_for(lambda: running.count("repack.done") == 40, 60, "40 repack.done")
            assert running.stop() == 0
        finally:
            running.kill()
    finally:
        stop_group(storescp_process)
    assert not healthy(storescp_process.pid)  # gone: unhealthy
    assert len(list((tmp_path / "srv" / "data").rglob("*.dcm"))) == 40


def test_kubernetes_example_wires_probes_to_the_health_endpoints() -> None:
    documents = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text()))
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    containers = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}
    sidecar = containers["pypx-listener"]
    assert sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert containers["storescp"]["args"][0] == "storescp"
    # args, not command: the image's ENTRYPOINT (its init) must stay PID 1.
    assert all("command" not in c for c in containers.values())
    # Pod Security "restricted", and what a locally built image and one RWO volume need.
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsGroup"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    for container in containers.values():
        assert container["imagePullPolicy"] == "IfNotPresent"
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
        }
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    environment = {e["name"]: e["value"] for e in sidecar["env"]}
    assert environment["PYPX_LISTENER_WORKERS"] == "2"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["incoming"]
    assert "persistentVolumeClaim" in volumes["pypx"]


def test_the_image_tag_is_the_version_everywhere() -> None:
    """pyproject.toml writes the version once; the compose file and the manifest run that tag."""
    import tomllib  # noqa: PLC0415

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    images = {service.get("image") for service in compose["services"].values()} - {None}
    manifest = (ROOT / "deploy" / "kubernetes.yaml").read_text()
    assert images == {f"pypx-listener:{version}"}
    assert set(re.findall(r"image: (pypx-listener:\S+)", manifest)) == {f"pypx-listener:{version}"}
    assert f"## [{version}]" in (ROOT / "CHANGELOG.md").read_text()
