"""``pypx-healthcheck``: the container's HEALTHCHECK, for whichever program the image runs.

It looks at the container's main process (PID 1 or ``--pid``, or the program
an init such as tini or catatonit runs): ``pypx-listener`` gets ``GET
/healthz`` on its metrics port (from its command line or
``PYPX_LISTENER_METRICS_PORT``; without one, alive is enough); ``storescp``
must accept a connection on its port (its last argument); anything else has
nothing to check. Exit 0 when healthy, 1 when not, with one line.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

_TIMEOUT = 4.0


def _command_line(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [os.fsdecode(part) for part in raw.split(b"\0") if part]


def _option(arguments: list[str], name: str) -> str | None:
    for index, argument in enumerate(arguments):
        if argument == name and index + 1 < len(arguments):
            return arguments[index + 1]
        if argument.startswith(name + "="):
            return argument.split("=", 1)[1]
    return None


def _check_listener(arguments: list[str]) -> tuple[bool, str]:
    port = _option(arguments, "--metrics-port") or os.environ.get("PYPX_LISTENER_METRICS_PORT")
    if not port or port in ("0", "off", "none"):
        return True, "pypx-listener is running (no metrics port to ask)"
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT) as response:
            return response.status == 200, f"{url}: {response.status}"
    except urllib.error.HTTPError as error:
        return False, f"{url}: {error.code} {error.read().decode(errors='replace')}"
    except OSError as error:
        return False, f"{url}: {error}"


def _check_storescp(arguments: list[str]) -> tuple[bool, str]:
    ports = [a for a in arguments[1:] if a.isdigit()]
    if not ports:
        return False, "storescp has no port on its command line"
    try:
        with socket.create_connection(("127.0.0.1", int(ports[-1])), timeout=_TIMEOUT):
            return True, f"storescp accepts connections on port {ports[-1]}"
    except OSError as error:
        return False, f"storescp on port {ports[-1]}: {error}"


#: Programs that run as PID 1 only to pass signals on and reap children.
_INITS = frozenset({"tini", "tini-static", "dumb-init", "docker-init", "catatonit"})


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return sorted(found)


def check(pid: int) -> tuple[bool, str]:
    """Whether the program running as ``pid`` is healthy, and what was checked."""
    try:
        arguments = _command_line(pid)
        while arguments and Path(arguments[0]).name in _INITS:
            children = _children(pid)
            if not children:
                return False, f"{arguments[0]} runs no program"
            pid = children[0]
            arguments = _command_line(pid)
    except OSError:
        return False, f"no process {pid}"
    names = [Path(a).name for a in arguments[:2]]
    if "pypx-listener" in names:
        return _check_listener(arguments)
    if names and names[0] == "storescp":
        return _check_storescp(arguments)
    return True, f"nothing to check for {' '.join(arguments[:1]) or 'process ' + str(pid)}"


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``pypx-healthcheck``."""
    parser = argparse.ArgumentParser(
        prog="pypx-healthcheck",
        description="Check the container's main program: pypx-listener or storescp.",
    )
    parser.add_argument(
        "--pid", type=int, default=1, help="the process to check (default: 1, the container's)"
    )
    arguments = parser.parse_args(argv)
    healthy, detail = check(arguments.pid)
    print(f"pypx-healthcheck: {'healthy' if healthy else 'unhealthy'}: {detail}")
    sys.exit(0 if healthy else 1)
