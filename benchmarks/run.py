"""Side-by-side benchmark of pypx-listener, pypx-repack and the real px-repack.

    python -m benchmarks.run [--quick] [--scale] [--out benchmarks/results]

Prints a table and writes the figures as JSON. Everything runs on this
machine, on loopback, in a scratch folder (``--work``, default a temporary
folder on the same file system as the checkout). Needs ``./get_examples.sh``
(the SAG-anon set and the real px-repack) and dcmtk for the storescp parts.

1. service throughput and CPU: instances/s from the moment files become
   visible in the incoming folder to the last ``repack.done`` (logs on, move
   mode), for the 192 SAG-anon files and 9,600 copies of them with fresh
   UIDs; and the CPU time per instance of the whole process tree (the
   service and its workers, user and sys apart, from
   ``getrusage(RUSAGE_CHILDREN)``, with the cost of a start and stop with no
   files subtracted). CPU time is the figure to steer by: rates on a shared
   2-core machine swing by 2x between runs, CPU per instance far less;
   ``Repacker.repack`` alone, in this process, is measured the same way;
2. end to end: storescu -> storescp with the service running, divided by the
   same send into storescp alone (``TCP_NODELAY=1`` on both);
3. latency: file close to ``repack.done`` at a steady 500 files/s;
4. memory and growth: peak RSS, and throughput with 10,000 vs 100,000
   (``--scale``) small instances;
5. peers: the real px-repack 3.10.16 (one process for the folder, and one
   process per file on a sample), and pypx-repack one-shot per file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from repack import Repacker
from tests.dcmtk import free_port, send, start_storescp, stop_group
from tests.helpers import proc_stat, worker_processes
from tests.workload import plan, write_workload

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = Path(os.environ.get("PYPX_EXAMPLES", ROOT / "examples"))
SAG = EXAMPLES / "FNNDSC-SAG-anon-3d6e850"
PX_REPACK = EXAMPLES / "pypx" / "bin" / "px-repack"


#: How long ext4 (without a journal) skips freed inodes when it allocates new ones.
_INODES_RECENT_S = 360


def _exe(name: str) -> list[str]:
    """An installed command, found beside this interpreter (never on PATH)."""
    return [str(Path(sys.executable).parent / name)]


class Cpu:
    """CPU time (user, sys) of the children this process waited for, between two points."""

    def __init__(self) -> None:
        self.start = resource.getrusage(resource.RUSAGE_CHILDREN)

    def seconds(self) -> tuple[float, float]:
        now = resource.getrusage(resource.RUSAGE_CHILDREN)
        return now.ru_utime - self.start.ru_utime, now.ru_stime - self.start.ru_stime


class Service:
    """pypx-listener in a scratch folder; counts repack.done lines as they come."""

    def __init__(self, root: Path, *extra: str) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.done = 0
        self.done_at: list[float] = []
        self.sources: dict[str, float] = {}  # src -> the event's own timestamp (epoch)
        self.started = threading.Event()
        self.process = subprocess.Popen(
            [
                *_exe("pypx-listener"),
                "--incoming",
                str(self.incoming),
                "--datadir",
                str(root / "data"),
                "--logdir",
                str(root / "log"),
                "--quarantine",
                str(root / "quarantine"),
                "--log-format",
                "json",
                "--settle",
                "0.2",
                "--series-quiet",
                "3600",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self.started.wait(60):
            raise RuntimeError("pypx-listener did not start")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            now = time.perf_counter()
            if b'"repack.done"' in line:
                self.done += 1
                self.done_at.append(now)
                event = orjson.loads(line)
                stamp = datetime.datetime.fromisoformat(event["timestamp"])
                self.sources[event["src"]] = stamp.timestamp()
            elif b'"watcher.started"' in line:
                self.started.set()

    def wait_done(self, count: int, timeout: float = 1800) -> float:
        deadline = time.perf_counter() + timeout
        while self.done < count:
            if time.perf_counter() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"only {self.done} of {count} repacked")
            time.sleep(0.002)
        return self.done_at[count - 1]

    def _processes(self) -> list[int]:
        """The service and its worker processes."""
        return [self.process.pid, *worker_processes(self.process.pid)]

    def cpu_s(self) -> float:
        """CPU seconds (user + sys) the service and its live worker processes used so far."""
        ticks = 0
        for process in self._processes():
            fields = proc_stat(process)
            ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15: utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def peak_rss_mb(self) -> dict[str, Any]:
        """Peak resident memory of the service and its worker processes, summed."""
        each = []
        for process in self._processes():
            for line in Path(f"/proc/{process}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    each.append(round(int(line.split()[1]) / 1024, 1))
        return {"total": sum(each), "each": each}

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._reader.join(10)


def discard(path: Path) -> None:
    """Put a finished scratch tree aside; everything is deleted once, at the very end.

    Deleting between measurements would bias the next one: on an ext4 file
    system without a journal (this project's machine) the inode allocator
    skips every inode freed in the last 1-6 minutes of its group, one
    buffer lookup each, so each file created soon after a mass deletion
    (storescp's instances, the service's JSON files) costs up to 7x the
    system time. Renaming frees nothing.
    """
    if path.exists():
        aside = path.parent / f".discarded-{path.name}-{time.monotonic_ns()}"
        path.rename(aside)


def settle_disk() -> None:
    """Write back what staging a workload dirtied, before anything is measured.

    Otherwise the kernel throttles whichever process dirties pages next, and
    charges that process with system time for someone else's gigabytes.
    """
    os.sync()


def startup_cpu(work: Path, rounds: int = 3) -> tuple[float, float]:
    """CPU (user, sys) of starting and stopping the service with nothing to do (median)."""
    users, systems = [], []
    for round_ in range(rounds):
        cpu = Cpu()
        Service(work / f"startup-{round_}").stop()
        user, system = cpu.seconds()
        users.append(user)
        systems.append(system)
        discard(work / f"startup-{round_}")
    return statistics.median(users), statistics.median(systems)


def service_throughput(
    work: Path, files: list[Path], label: str, startup: tuple[float, float] = (0.0, 0.0)
) -> dict[str, Any]:
    """Files appear in the incoming folder all at once (renamed in from outside).

    A file renamed in from outside is announced as "created" and waits for
    the settle period (--settle 0.2 here), which bounds the figure for small
    workloads; storescp's own files are announced by their close. The steady
    rate runs from the first to the last ``repack.done``.
    """
    root = work / f"service-{label}"
    settle_disk()
    cpu = Cpu()
    service = Service(root)
    try:
        started = time.perf_counter()
        for path in files:
            os.rename(path, service.incoming / path.name)
        visible = time.perf_counter() - started
        finished = service.wait_done(len(files))
        seconds = finished - started
        steady = finished - service.done_at[0]
        peak = service.peak_rss_mb()
    finally:
        service.stop()
    user, system = cpu.seconds()
    user, system = max(0.0, user - startup[0]), max(0.0, system - startup[1])
    result = {
        "workload": label,
        "instances": len(files),
        "seconds": round(seconds, 3),
        "instances_per_s": round(len(files) / seconds, 1),
        "steady_instances_per_s": round((len(files) - 1) / steady, 1) if steady > 0 else None,
        "visible_after_s": round(visible, 3),
        "cpu_ms_per_instance": round((user + system) * 1000 / len(files), 3),
        "user_ms_per_instance": round(user * 1000 / len(files), 3),
        "sys_ms_per_instance": round(system * 1000 / len(files), 3),
        "peak_rss_mb": round(peak["total"], 1),
        "peak_rss_by_process_mb": peak["each"],
    }
    discard(root)
    return result


def _send(port: int, files: list[Path]) -> float:
    started = time.perf_counter()
    send(port, files, timeout=1800)
    return time.perf_counter() - started


def end_to_end(work: Path, files: list[Path], label: str, rounds: int = 3) -> dict[str, Any]:
    """storescu -> storescp with the service, against the same send into storescp alone.

    Rounds alternate (alone, then with the service), so that the host's
    drift hits both alike. Beside the times, CPU per instance: storescp and
    storescu together in the rounds alone, and the service's whole tree
    (itself and its workers) in the rounds with it, read from /proc from its
    start to the last ``repack.done``: what it spends while files arrive,
    with no start or stop in it (at 192 files the start-up alone would be
    more than the work).
    """
    alone, together, sending, dcmtk_cpu, service_cpu = [], [], [], [], []
    for round_ in range(rounds):
        port = free_port()
        settle_disk()
        cpu = Cpu()
        scp = start_storescp(work / f"alone-{round_}", port=port)
        try:
            alone.append(_send(port, files))
        finally:
            stop_group(scp)
        dcmtk_cpu.append(sum(cpu.seconds()))
        discard(work / f"alone-{round_}")
        root = work / f"e2e-{round_}"
        settle_disk()
        service = Service(root)
        port = free_port()
        scp = start_storescp(service.incoming, port=port)
        try:
            before = service.cpu_s()
            started = time.perf_counter()
            send(port, files, timeout=1800)
            sending.append(time.perf_counter() - started)
            together.append(service.wait_done(len(files)) - started)
            service_cpu.append(service.cpu_s() - before)
        finally:
            stop_group(scp)
            service.stop()
        discard(root)
    best_alone, best_together = statistics.median(alone), statistics.median(together)
    per_instance = 1000 / len(files)
    return {
        "workload": label,
        "instances": len(files),
        "rounds": rounds,
        "storescp_alone_s": round(best_alone, 3),
        "with_service_s": round(best_together, 3),
        "ratio": round(best_together / best_alone, 3),
        "ratios_each_round": [round(t / a, 3) for t, a in zip(together, alone, strict=True)],
        # The transfer with the service running against the one alone, and how long
        # after storescu's exit the last repack.done came: slowed down, or behind.
        "send_ratios_each_round": [round(t / a, 3) for t, a in zip(sending, alone, strict=True)],
        "tail_ms_each_round": [
            round((t - s) * 1000, 1) for t, s in zip(together, sending, strict=True)
        ],
        "dcmtk_cpu_ms_per_instance": [round(c * per_instance, 3) for c in dcmtk_cpu],
        "service_cpu_ms_per_instance": [round(c * per_instance, 3) for c in service_cpu],
    }


def repack_alone(work: Path, sag: list[Path]) -> dict[str, Any]:
    """``Repacker.repack`` in this process, one thread, no service: CPU per instance.

    960 copies of the SAG-anon instances with fresh UIDs (a new instance each,
    as a PACS sends them), logs on, move mode.
    """
    repacker = Repacker(work / "alone-data", work / "alone-log", move=True)
    staged = write_workload(work / "alone-in", plan(1, 1, 5, 192, seed="A"), sources=sag)
    repacker.repack(staged[0])  # warm, as the service's workers are
    settle_disk()
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    for path in staged[1:]:
        repacker.repack(path)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    count = len(staged) - 1
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {
        "instances": count,
        "cpu_ms_per_instance": round((user + system) * 1000 / count, 3),
        "user_ms_per_instance": round(user * 1000 / count, 3),
        "sys_ms_per_instance": round(system * 1000 / count, 3),
        "wall_ms_per_instance": round(seconds * 1000 / count, 3),
    }


def latency(work: Path, rate: float, seconds: float) -> dict[str, Any]:
    """Write (and close) small files at ``rate``/s; time close -> repack.done.

    Also the CPU per instance of the service while files trickle in one at a
    time (as storescp writes them), read from /proc between its start and
    the last ``repack.done``.
    """
    count = int(rate * seconds)
    staging = work / "latency-staging"
    payloads = [p.read_bytes() for p in write_workload(staging, plan(1, 1, 4, count // 4 + 1))]
    root = work / "latency"
    settle_disk()
    service = Service(root)
    closed: dict[str, float] = {}
    try:
        before = service.cpu_s()
        started = time.perf_counter()
        for index in range(count):
            due = started + index / rate
            while (now := time.perf_counter()) < due:
                time.sleep(min(0.001, due - now))
            path = service.incoming / f"MR.lat.{index}"
            with open(path, "wb") as handle:
                handle.write(payloads[index])
            closed[str(path)] = time.time()  # the clock of the events' timestamps
        service.wait_done(count)
        offered = count / (time.perf_counter() - started)
        spent = service.cpu_s() - before
    finally:
        service.stop()
    delays = sorted(
        (service.sources[p] - t) * 1000 for p, t in closed.items() if p in service.sources
    )
    discard(root)
    discard(staging)
    return {
        "cpu_ms_per_instance": round(spent * 1000 / count, 3),
        "rate_per_s": rate,
        "achieved_rate_per_s": round(offered, 1),
        "instances": count,
        "p50_ms": round(delays[len(delays) // 2], 2),
        "p99_ms": round(delays[int(len(delays) * 0.99) - 1], 2),
        "max_ms": round(delays[-1], 2),
    }


def _time(command: list[str], cwd: Path | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(
        command,
        check=True,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=3600,
    )
    return time.perf_counter() - started


def peers(work: Path, sample: int) -> dict[str, Any]:
    files = sorted(SAG.glob("*.dcm"))
    results: dict[str, Any] = {}
    if PX_REPACK.exists():
        out = work / "px-folder"
        seconds = _time(
            [
                str(PX_REPACK),
                "--xcrdir",
                str(SAG),
                "--parseAllFilesWithSubStr",
                ",",
                "--datadir",
                str(out / "data"),
                "--logdir",
                str(out / "log"),
                "--verbosity",
                "0",
            ]
        )
        results["px_repack_folder"] = {
            "instances": len(files),
            "seconds": round(seconds, 3),
            "instances_per_s": round(len(files) / seconds, 1),
        }
        out = work / "px-file"
        per_file = [
            _time(
                [
                    str(PX_REPACK),
                    "--xcrdir",
                    str(SAG),
                    "--xcrfile",
                    f.name,
                    "--datadir",
                    str(out / "data"),
                    "--logdir",
                    str(out / "log"),
                    "--verbosity",
                    "0",
                ]
            )
            for f in files[:sample]
        ]
        mean = statistics.mean(per_file)
        results["px_repack_per_file"] = {
            "sample": sample,
            "mean_s": round(mean, 4),
            "instances_per_s": round(1 / mean, 2),
        }
    out = work / "ours-file"
    per_file = [
        _time(
            [
                *_exe("pypx-repack"),
                "--xcrdir",
                str(SAG),
                "--xcrfile",
                f.name,
                "--datadir",
                str(out / "data"),
                "--logdir",
                str(out / "log"),
            ]
        )
        for f in files[:sample]
    ]
    mean = statistics.mean(per_file)
    results["pypx_repack_per_file"] = {
        "sample": sample,
        "mean_s": round(mean, 4),
        "instances_per_s": round(1 / mean, 2),
    }
    out = work / "ours-folder"
    seconds = _time(
        [
            *_exe("pypx-repack"),
            "--datadir",
            str(out / "data"),
            "--logdir",
            str(out / "log"),
            str(SAG),
        ]
    )
    results["pypx_repack_folder"] = {
        "instances": len(files),
        "seconds": round(seconds, 3),
        "instances_per_s": round(len(files) / seconds, 1),
    }
    return results


def _section(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n{title}")
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smaller workloads (a smoke run)")
    parser.add_argument("--scale", action="store_true", help="also 100,000 small instances")
    parser.add_argument(
        "--only", nargs="*", default=None, help="subset: service alone e2e latency growth peers"
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="service runs on the big workload (the spread)"
    )
    parser.add_argument("--work", type=Path, default=None, help="scratch folder")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    arguments = parser.parse_args(argv)
    if not SAG.exists():
        sys.exit(f"benchmark: {SAG} not found: run ./get_examples.sh first")
    sag = sorted(SAG.glob("*.dcm"))
    parts = set(arguments.only or ["service", "alone", "e2e", "latency", "growth", "peers"])
    copies = 10 if arguments.quick else 50
    results: dict[str, Any] = {
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "command": " ".join(["python -m benchmarks.run", *(argv or sys.argv[1:])]),
    }
    arguments.out.mkdir(parents=True, exist_ok=True)
    cleaned = arguments.out / ".scratch-deleted"  # touched when a run deleted its scratch tree
    if cleaned.exists() and (ago := time.time() - cleaned.stat().st_mtime) < _INODES_RECENT_S:
        results["scratch_deleted_s_ago"] = round(ago)
        print(
            f"benchmark: a previous run deleted its scratch tree {ago:.0f} s ago: on ext4 without"
            f" a journal new files cost more for {_INODES_RECENT_S // 60} minutes after a mass"
            " deletion, so these figures are pessimistic",
            file=sys.stderr,
        )
    work = Path(tempfile.mkdtemp(prefix="pypx-bench-", dir=arguments.work or ROOT))
    try:
        run_parts(parts, results, work, sag, copies=copies, arguments=arguments)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        cleaned.touch()
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    payload = json.dumps(results, indent=2)
    (arguments.out / f"{stamp}.json").write_text(payload)
    (arguments.out / "latest.json").write_text(payload)
    print(f"\nwrote {arguments.out / 'latest.json'}")


def _measure(name: str, function: Callable[[], Any]) -> Any:
    print(f"... {name}", file=sys.stderr, flush=True)
    return function()


def _part_service(
    results: dict[str, Any], work: Path, sag: list[Path], copies: int, arguments: argparse.Namespace
) -> None:
    startup = _measure("start-up cost", lambda: startup_cpu(work))
    results["startup_cpu_s"] = {"user": round(startup[0], 3), "sys": round(startup[1], 3)}
    staged = work / "sag"
    shutil.copytree(SAG, staged)
    rows = [
        _measure(
            "service, 192 SAG-anon",
            lambda: service_throughput(work, sorted(staged.glob("*.dcm")), "sag-192", startup),
        )
    ]
    for run in range(arguments.runs):
        big_files = write_workload(
            work / "big", plan(5, 2, copies // 10, 192, seed=f"B{run}"), sources=sag
        )
        rows.append(
            _measure(
                f"service, {len(big_files)} (run {run + 1} of {arguments.runs})",
                lambda f=big_files, r=run: service_throughput(
                    work, f, f"sag-x{copies}-run{r + 1}", startup
                ),
            )
        )
        discard(work / "big")
    results["service"] = rows
    _section(
        "Service (files visible -> last repack.done; logs on; move; start-up CPU subtracted)",
        [
            (
                r["workload"],
                f"{r['instances']} in {r['seconds']} s = {r['instances_per_s']}/s"
                f" (steady {r['steady_instances_per_s']}/s); CPU {r['cpu_ms_per_instance']}"
                f" ms/instance (user {r['user_ms_per_instance']}, sys"
                f" {r['sys_ms_per_instance']}); peak RSS {r['peak_rss_mb']} MB"
                f" {r['peak_rss_by_process_mb']}",
            )
            for r in rows
        ],
    )


def _part_alone(
    results: dict[str, Any], work: Path, sag: list[Path], copies: int, arguments: argparse.Namespace
) -> None:
    row = _measure("Repacker.repack alone", lambda: repack_alone(work, sag))
    results["repack_alone"] = row
    _section(
        "Repacker.repack alone (one thread, in process, 960 SAG-anon instances)",
        [
            (
                "CPU per instance",
                f"{row['cpu_ms_per_instance']} ms (user {row['user_ms_per_instance']},"
                f" sys {row['sys_ms_per_instance']}), wall {row['wall_ms_per_instance']} ms",
            )
        ],
    )


def _part_e2e(
    results: dict[str, Any], work: Path, sag: list[Path], copies: int, arguments: argparse.Namespace
) -> None:
    if not shutil.which("storescp"):
        return
    ten = write_workload(work / "e2e-10", plan(1, 2, 5, 192, seed="E"), sources=sag)
    results["end_to_end"] = [
        _measure("end to end, 192", lambda: end_to_end(work, sag, "sag-192", 5)),
        _measure("end to end, 1920", lambda: end_to_end(work, ten, "sag-x10", 5)),
    ]
    if arguments.scale:
        fifty = write_workload(work / "e2e-50", plan(5, 2, 5, 192, seed="F"), sources=sag)
        results["end_to_end"].append(
            _measure("end to end, 9600", lambda: end_to_end(work, fifty, "sag-x50", 1))
        )
    _section(
        "End to end: storescu -> storescp (+ service) / storescp alone",
        [
            (
                row["workload"],
                f"alone {row['storescp_alone_s']} s, with service "
                f"{row['with_service_s']} s, ratio {row['ratio']} (rounds"
                f" {row['ratios_each_round']}; the send alone {row['send_ratios_each_round']},"
                f" then {row['tail_ms_each_round']} ms); CPU ms/instance: storescp+storescu"
                f" {row['dcmtk_cpu_ms_per_instance']}, service"
                f" {row['service_cpu_ms_per_instance']}",
            )
            for row in results["end_to_end"]
        ],
    )


def _part_latency(
    results: dict[str, Any], work: Path, sag: list[Path], copies: int, arguments: argparse.Namespace
) -> None:
    row = _measure("latency", lambda: latency(work, 500.0, 5.0 if arguments.quick else 10.0))
    results["latency"] = row
    _section(
        "Latency: close -> repack.done at a steady rate"
        " (small instances; the service's CPU while they trickle in)",
        [
            (
                f"{row['rate_per_s']:.0f}/s offered ({row['achieved_rate_per_s']}/s achieved)",
                f"p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, max {row['max_ms']} ms;"
                f" CPU {row['cpu_ms_per_instance']} ms/instance",
            )
        ],
    )


def _part_growth(
    results: dict[str, Any], work: Path, sag: list[Path], copies: int, arguments: argparse.Namespace
) -> None:
    sizes = [10_000] + ([100_000] if arguments.scale else [])
    rows = []
    for size in sizes:
        files = write_workload(work / f"growth-{size}", plan(10, 10, 10, size // 1000, seed="G"))
        rows.append(
            _measure(
                f"growth {size}",
                lambda f=files, s=size: service_throughput(work, f, f"small-{s}"),
            )
        )
        discard(work / f"growth-{size}")
    results["growth"] = rows
    _section(
        "Growth: small synthetic instances",
        [
            (
                r["workload"],
                f"{r['instances_per_s']} instances/s, "
                f"{1e6 / r['instances_per_s']:.0f} us/instance, peak RSS {r['peak_rss_mb']} MB",
            )
            for r in rows
        ],
    )


def _part_peers(
    results: dict[str, Any], work: Path, sag: list[Path], copies: int, arguments: argparse.Namespace
) -> None:
    results["peers"] = _measure("peers", lambda: peers(work, 5 if arguments.quick else 20))
    service_rate = results.get("service", [{}])[-1].get("instances_per_s")
    rows = []
    for name, row in results["peers"].items():
        ratio = (
            f", service is {service_rate / row['instances_per_s']:.0f}x faster"
            if service_rate
            else ""
        )
        rows.append((name, f"{row['instances_per_s']} instances/s{ratio}"))
    _section("Peers", rows)


_PARTS: dict[str, Callable[[dict[str, Any], Path, list[Path], int, argparse.Namespace], None]] = {
    "service": _part_service,
    "alone": _part_alone,
    "e2e": _part_e2e,
    "latency": _part_latency,
    "growth": _part_growth,
    "peers": _part_peers,
}


def run_parts(
    parts: set[str],
    results: dict[str, Any],
    work: Path,
    sag: list[Path],
    *,
    copies: int,
    arguments: argparse.Namespace,
) -> None:
    """Run the parts asked for, in the order of :data:`_PARTS`."""
    for name, part in _PARTS.items():
        if name in parts:
            part(results, work, sag, copies, arguments)


if __name__ == "__main__":
    main()
