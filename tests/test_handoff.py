"""The hand-off of completed series (issue 21), with real brokers, a real Celery worker running
CUBE's task, a NATS subscriber, a webhook server and a command, all started here on loopback."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from .brokers import (
    NatsSubscriber,
    Webhook,
    cube_worker,
    nats_server,
    python_command,
    rabbitmq_server,
    redis_server,
)
from .dcmtk import storescp, storescu
from .helpers import FAST, wait_for
from .listener import Listener, listener

PACS = "PYPXTEST"
pytestmark = pytest.mark.slow


class Cube:
    """CUBE's storage (the data folder is its SERVICES/PACS/<pacs>) and its registrations."""

    def __init__(self, root: Path) -> None:
        self.storage = root / "cube-storage"
        self.datadir = self.storage / "SERVICES" / "PACS" / PACS
        self.registry = root / "registered.jsonl"

    def args(self, broker: str, *more: str) -> tuple[str, ...]:
        return (
            "--datadir",
            str(self.datadir),
            "--pacs-name",
            PACS,
            "--celery-broker",
            broker,
            *more,
        )


def series_of(events: list[dict[str, Any]]) -> set[str]:
    return {str(e["SeriesInstanceUID"]) for e in events}


def put(running: Listener, files: list[Path]) -> None:
    """Move copies of ``files`` into the service's incoming folder, as a sender would."""
    for path in files:
        (running.incoming / path.name).write_bytes(path.read_bytes())


def outbox(running: Listener) -> list[Path]:
    return sorted(
        p
        for p in (running.log / "outbox").rglob("*.json")
        if not any(part.startswith(".") for part in p.relative_to(running.log).parts)
    )  # records only: not the marks, dead letters or what CUBE was asked to register


@pytest.fixture
def cube(tmp_path: Path) -> Cube:
    return Cube(tmp_path)


def _service(tmp_path: Path, cube: Cube, broker: str, *more: str) -> Listener:
    # The listener's own --datadir comes first; the later one (CUBE's) wins.
    return Listener(tmp_path, *FAST, *cube.args(broker, *more))


def _killed_once(
    service: Listener, files: list[Path], until: Callable[[], bool], what: str
) -> None:
    """Start ``service``, give it ``files``, wait for ``until()``, then SIGKILL its group."""
    service.start()
    try:
        put(service, files)
        service.wait_for(until, 60, what)
    finally:
        service.kill()


def test_one_series_end_to_end_through_storescp_to_every_destination(
    tmp_path: Path, cube: Cube, example_files: list[Path]
) -> None:
    """storescp writes 192 instances; CUBE's task registers them, LONK reports progress and
    "done", the webhook gets the document once, the command gets it on stdin."""
    received = tmp_path / "command-got.json"
    command = python_command(
        f"import sys,os; open({str(received)!r},'wb').write(sys.stdin.buffer.read());"
        f" open({str(received)!r}+'.env','w').write(os.environ['PYPX_SERIES_SERIES_INSTANCE_UID'])"
    )
    with redis_server(tmp_path / "redis") as redis, nats_server() as nats, Webhook() as hook:
        broker = f"redis://127.0.0.1:{redis.port}/0"
        nats_url = f"nats://127.0.0.1:{nats.port}"
        with (
            cube_worker(broker, cube.storage, cube.registry) as worker,
            NatsSubscriber(nats_url) as subscriber,
            listener(
                tmp_path,
                *FAST,
                *cube.args(
                    broker,
                    "--nats-url",
                    nats_url,
                    "--webhook-url",
                    hook.url,
                    "--on-series-complete",
                    command,
                    "--progress-interval",
                    "0.2",
                ),
            ) as running,
        ):
            with storescp(running.incoming) as port:
                storescu(port, example_files)
            running.wait_for(lambda: running.count("handoff.sent") == 4, 90, "4 deliveries")
            wait_for(lambda: len(worker.registered()) == 1, 60, "CUBE's registration")
            assert running.stop() == 0
    (registered,) = worker.registered()
    (complete,) = running.of("series.complete")
    assert registered["SeriesInstanceUID"] == complete["SeriesInstanceUID"]
    assert registered["ndicom"] == 192
    assert registered["pacs_name"] == PACS
    assert registered["path"].startswith(f"SERVICES/PACS/{PACS}/")
    assert registered["StudyDate"].count("-") == 2
    assert worker.refused() == []
    subject = f"oxidicom.{PACS}.{complete['SeriesInstanceUID'].replace('.', '_')}"
    payloads = [data for topic, data in subscriber.messages if topic == subject]
    counts = [struct.unpack("<I", p[1:])[0] for p in payloads if p[:1] == b"\x01"]
    assert counts[0] == 1, counts  # the first and the last always
    assert counts[-1] == 192, counts
    assert counts == sorted(counts)
    assert payloads[-1] == b"\x00"  # done, after the registration
    ((key, document),) = hook.received
    assert document["ndicom"] == 192
    assert key == next(e["key"] for e in running.of("handoff.sent"))
    assert (
        orjson.loads(received.read_bytes())["SeriesInstanceUID"] == registered["SeriesInstanceUID"]
    )
    assert Path(f"{received}.env").read_text() == registered["SeriesInstanceUID"]
    assert outbox(running) == []


def test_rabbitmq_as_cubes_broker(tmp_path: Path, cube: Cube, example_files: list[Path]) -> None:
    with rabbitmq_server(tmp_path / "rabbit") as rabbit:
        broker = f"amqp://guest:guest@127.0.0.1:{rabbit.port}//"
        with (
            cube_worker(broker, cube.storage, cube.registry) as worker,
            listener(tmp_path, *FAST, *cube.args(broker)) as running,
        ):
            put(running, example_files[:12])
            wait_for(lambda: len(worker.registered()) == 1, 120, "CUBE's registration")
            assert running.stop() == 0
    assert worker.registered()[0]["ndicom"] == 12
    assert "guest:guest" not in str(running.of("watcher.started"))  # the password is not said


def test_a_broker_outage_while_a_series_completes_loses_nothing(
    tmp_path: Path, cube: Cube, example_files: list[Path]
) -> None:
    with redis_server(tmp_path / "redis") as redis:
        broker = f"redis://127.0.0.1:{redis.port}/0"
        redis.stop()
        with listener(tmp_path, *FAST, *cube.args(broker)) as running:
            put(running, example_files[:8])
            running.wait_for(lambda: running.count("handoff.retry") >= 2, 60, "retries")
            assert len(outbox(running)) == 1
            redis.start()
            with cube_worker(broker, cube.storage, cube.registry) as worker:
                running.wait_for(lambda: running.count("handoff.sent") == 1, 60, "the delivery")
                wait_for(lambda: len(worker.registered()) == 1, 60, "CUBE's registration")
            assert running.stop() == 0
    assert worker.registered()[0]["ndicom"] == 8
    assert outbox(running) == []


def test_broker_down_sigkill_restart_broker_back(
    tmp_path: Path, cube: Cube, example_files: list[Path]
) -> None:
    """The record written before the outage survives a SIGKILL; the restarted service delivers."""
    with redis_server(tmp_path / "redis") as redis:
        broker = f"redis://127.0.0.1:{redis.port}/0"
        redis.stop()
        first = _service(tmp_path, cube, broker)
        _killed_once(
            first, example_files[:6], lambda: first.count("handoff.retry") >= 1, "a failed delivery"
        )
        assert len(outbox(first)) == 1
        with listener(tmp_path, *FAST, *cube.args(broker)) as again:
            redis.start()
            with cube_worker(broker, cube.storage, cube.registry) as worker:
                wait_for(lambda: len(worker.registered()) == 1, 90, "CUBE's registration")
            assert again.stop() == 0
    assert worker.registered()[0]["ndicom"] == 6
    assert outbox(again) == []


def test_a_series_cut_short_by_sigkill_is_adopted_and_registered(
    tmp_path: Path, cube: Cube, example_files: list[Path]
) -> None:
    """Killed after repacking, before the series went quiet: the next start announces it."""
    with redis_server(tmp_path / "redis") as redis:
        broker = f"redis://127.0.0.1:{redis.port}/0"
        first = _service(tmp_path, cube, broker, "--series-quiet", "600")
        _killed_once(
            first, example_files[:5], lambda: first.count("repack.done") == 5, "5 repacked"
        )
        assert first.count("series.complete") == 0
        with (
            cube_worker(broker, cube.storage, cube.registry) as worker,
            listener(tmp_path, *FAST, *cube.args(broker)) as again,
        ):
            again.wait_for(lambda: again.count("handoff.adopted") == 1, 30, "the adoption")
            wait_for(lambda: len(worker.registered()) == 1, 90, "CUBE's registration")
            assert again.stop() == 0
    assert worker.registered()[0]["ndicom"] == 5


def test_the_same_series_resent_is_registered_once(
    tmp_path: Path, cube: Cube, example_files: list[Path]
) -> None:
    """The same instances sent again complete the series again: no second registration is
    sent (CUBE would refuse it), nothing is said to be late, CUBE has it once."""
    with redis_server(tmp_path / "redis") as redis:
        broker = f"redis://127.0.0.1:{redis.port}/0"
        with (
            cube_worker(broker, cube.storage, cube.registry) as worker,
            listener(tmp_path, *FAST, *cube.args(broker)) as running,
        ):
            put(running, example_files[:4])
            running.wait_for(lambda: running.count("handoff.sent") == 1, 60, "sent")
            wait_for(lambda: len(worker.registered()) == 1, 60, "CUBE's registration")
            put(running, example_files[:4])
            running.wait_for(lambda: running.count("series.complete") == 2, 60, "again")
            assert running.stop() == 0
    assert running.count("handoff.sent") == 1
    assert running.count("series.late") == 0
    assert len(worker.registered()) == 1
    assert worker.refused() == []


def test_a_webhook_that_fails_is_retried_with_the_same_key_and_two_services_deliver_once(
    tmp_path: Path, example_files: list[Path]
) -> None:
    with Webhook(fail=3) as hook:
        args = (*FAST, "--webhook-url", hook.url)
        with listener(tmp_path, *args) as one, listener(tmp_path, *args) as two:
            put(one, example_files[:20])
            wait_for(lambda: len(hook.received) >= 1 and not outbox(one), 60, "the deliveries")
            assert one.stop() == 0
            assert two.stop() == 0
        retried = one.of("handoff.retry") + two.of("handoff.retry")
        sent = one.of("handoff.sent") + two.of("handoff.sent")
    keys = [key for key, _ in hook.received]
    assert len(keys) == len(set(keys)) == len(sent)  # each record delivered once
    assert len(retried) == 3
    assert {r["key"] for r in retried} <= set(keys)  # the same key on every try


def test_settings_of_the_hand_off_fail_clearly(tmp_path: Path) -> None:
    from watcher import ConfigError, Service, parse_settings  # noqa: PLC0415

    def start(*args: str) -> str:
        settings = parse_settings(
            [
                "--incoming",
                str(tmp_path / "i"),
                "--datadir",
                str(tmp_path / "d"),
                "--logdir",
                str(tmp_path / "l"),
                *args,
            ],
            environ={},
        )
        with pytest.raises(ConfigError) as raised:
            Service(settings)
        return f"{raised.value} / {raised.value.hint}"

    assert "--pacs-name" in start("--celery-broker", "redis://127.0.0.1:1/0")
    assert "20 characters" in start("--pacs-name", "X" * 21, "--nats-url", "nats://127.0.0.1:1")
    assert "SERVICES/PACS/PX" in start("--pacs-name", "PX", "--celery-broker", "redis://h:1/0")
    assert "http" in start("--webhook-url", "ftp://x")


def test_the_series_document_names_cubes_path(
    tmp_path: Path, cube: Cube, example_files: list[Path]
) -> None:
    with (
        Webhook() as hook,
        listener(
            tmp_path,
            *FAST,
            "--datadir",
            str(cube.datadir),
            "--pacs-name",
            PACS,
            "--webhook-url",
            hook.url,
        ) as running,
    ):
        for path in example_files[:3]:
            (running.incoming / path.name).write_bytes(path.read_bytes())
        wait_for(lambda: len(hook.received) == 1, 60, "the webhook")
        assert running.stop() == 0
    ((_, document),) = hook.received
    folder = Path(document["folder"])
    assert document["path"] == f"SERVICES/PACS/{PACS}/{folder.relative_to(cube.datadir)}"
    assert document["ndicom"] == 3
    assert document["tags"]["Modality"] == "MR"


@pytest.fixture(autouse=True)
def _no_stray(tmp_path: Path) -> Iterator[None]:
    yield
    assert not list(tmp_path.rglob(".pypx-tmp-*"))


def test_a_series_cube_would_refuse_gets_no_registration_and_a_lonk_error(
    tmp_path: Path, cube: Cube
) -> None:
    """No StudyDate: CUBE (and oxidicom) refuse such a series. Its instance is quarantined
    (``refused-by-cube``), never put into CUBE's storage nor registered, and the series'
    LONK subject hears of it once, so the UI does not wait for it."""
    from .conftest import make_dataset, write_dicom  # noqa: PLC0415

    with redis_server(tmp_path / "redis") as redis, nats_server() as nats:
        broker = f"redis://127.0.0.1:{redis.port}/0"
        nats_url = f"nats://127.0.0.1:{nats.port}"
        with (
            NatsSubscriber(nats_url) as subscriber,
            listener(tmp_path, *FAST, *cube.args(broker, "--nats-url", nats_url)) as running,
        ):
            dataset = make_dataset()
            del dataset.StudyDate
            write_dicom(running.incoming / "MR.nodate", dataset)
            write_dicom(running.incoming / "MR.nodate-2", dataset, SOPInstanceUID="1.2.9.9")
            running.wait_for(lambda: running.count("repack.failed") == 2, 60, "both refused")
            wait_for(lambda: len(subscriber.messages) == 1, 30, "the LONK error")
            assert running.stop() == 0
    assert {event["reason"] for event in running.of("repack.failed")} == {"refused-by-cube"}
    assert running.count("handoff.sent") == 0
    assert list(cube.datadir.rglob("*.dcm")) == []
    ((subject, payload),) = subscriber.messages
    assert subject == f"oxidicom.{PACS}.{dataset.SeriesInstanceUID.replace('.', '_')}"
    assert payload[:1] == b"\x02"
    assert b"StudyDate" in payload
    assert outbox(running) == []


def test_a_destination_that_is_down_costs_one_attempt_per_pass_not_one_per_record(
    tmp_path: Path,
) -> None:
    """Five series wait; the webhook fails: one pass tries one record, the rest wait their turn."""
    from watcher._destinations import Webhook as WebhookDestination  # noqa: PLC0415
    from watcher._handoff import Handoff  # noqa: PLC0415
    from watcher._metrics import Metrics  # noqa: PLC0415

    from .test_outcomes import Log  # noqa: PLC0415

    with Webhook(fail=100) as hook:
        log = Log()
        handoff = Handoff(tmp_path / "log", [WebhookDestination(hook.url)], metrics=Metrics(),
                          log=log)  # fmt: skip
        (tmp_path / "log" / "outbox" / "webhook").mkdir(parents=True)
        for number in range(5):
            handoff.series_complete({"SeriesInstanceUID": f"1.2.{number}", "ndicom": 1})
        handoff.deliver_due()
        assert hook.attempts == 1
        assert log.events() == ["handoff.retry"]
        handoff.deliver_due()  # the four others were due; the first waits its back-off
        assert hook.attempts == 2
        hook.fail = 0
        handoff.deliver_due()
        assert len(hook.received) == 3  # all that were due went, one after the other


def test_no_progress_message_follows_a_series_done() -> None:
    """A count still queued when the series completes is dropped; a resend starts afresh."""
    from watcher._lonk import LonkProgress, NatsConnection  # noqa: PLC0415

    with nats_server() as nats:
        url = f"nats://127.0.0.1:{nats.port}"
        with NatsSubscriber(url) as subscriber:
            connection = NatsConnection(url)
            progress = LonkProgress(connection, interval=0.0)
            with connection.lock:  # the publisher waits: what it holds is still queued
                progress.count(PACS, "1.2.3", 7)
                progress.forget("1.2.3")  # complete: its "done" is on its way
                progress.count(PACS, "1.2.3", 1)  # the series sent again: a new first instance
            progress.stop()
            connection.publish([("oxidicom.flush", b"")])  # the server has all before it
            wait_for(lambda: any(t == "oxidicom.flush" for t, _ in subscriber.messages), 10,
                     "the flush")  # fmt: skip
            connection.close()
    counts = [
        struct.unpack("<I", d[1:])[0] for t, d in subscriber.messages if t != "oxidicom.flush"
    ]
    assert counts == [1]


def test_a_series_another_live_service_marked_costs_no_descriptor(tmp_path: Path) -> None:
    """Two services on one log tree: the second finds the mark locked, and keeps nothing open."""
    from watcher._destinations import Webhook as WebhookDestination  # noqa: PLC0415
    from watcher._handoff import Handoff  # noqa: PLC0415
    from watcher._metrics import Metrics  # noqa: PLC0415

    from .test_outcomes import Log  # noqa: PLC0415

    (tmp_path / "log" / "outbox" / ".receiving").mkdir(parents=True)
    one, two = (
        Handoff(tmp_path / "log", [WebhookDestination("http://127.0.0.1:9/")], metrics=Metrics(),
                log=Log())
        for _ in range(2)
    )  # fmt: skip
    one.receiving("1.2.3", "/data/x", "", "P", "1.2")
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        two.receiving("1.2.3", "/data/x", "", "P", "1.2")
    assert len(os.listdir("/proc/self/fd")) == before
    one.stop(1)
    two.stop(1)


def test_each_sender_is_its_own_pacs_in_cube(tmp_path: Path, example_files: list[Path]) -> None:
    """``--pacs-name-from caller``, as oxidicom: storescp records the calling AE title in
    each file's meta (0002,0016); two senders are two PACS in CUBE, each a
    folder of ``SERVICES/PACS``, each registered (by CUBE's own checks) and announced on
    its own LONK subject. A file naming no sender goes to ``--pacs-name``'s folder.
    (One series sent by two senders at once is one series to the service: the folder of
    its first instance's sender.)"""
    import pydicom  # noqa: PLC0415

    storage = tmp_path / "cube-storage"
    registry = tmp_path / "registered.jsonl"

    def copies(files: list[Path], suffix: str) -> list[Path]:
        """The files as another series (``suffix`` added to its UID)."""
        made = []
        for path in files:
            dataset = pydicom.dcmread(path)
            dataset.SeriesInstanceUID += suffix
            dataset.file_meta.pop("SourceApplicationEntityTitle", None)
            made.append(tmp_path / f"series{suffix}-{path.name}")
            dataset.save_as(made[-1], enforce_file_format=True)
        return made

    second = copies(example_files[5:8], ".8")
    (unnamed,) = copies(example_files[:1], ".9")
    with redis_server(tmp_path / "redis") as redis, nats_server() as nats:
        broker = f"redis://127.0.0.1:{redis.port}/0"
        nats_url = f"nats://127.0.0.1:{nats.port}"
        with (
            cube_worker(broker, storage, registry) as worker,
            NatsSubscriber(nats_url) as subscriber,
            listener(
                tmp_path,
                *FAST,
                "--datadir",
                str(storage / "SERVICES" / "PACS"),
                "--pacs-name",
                "FALLBACK",
                "--pacs-name-from",
                "caller",
                "--celery-broker",
                broker,
                "--nats-url",
                nats_url,
            ) as running,  # fmt: skip
        ):
            with storescp(running.incoming) as port:
                storescu(port, example_files[:5], "-aet", "ORTHANC")
                storescu(port, second, "-aet", "MY PACS")
            put(running, [unnamed])
            wait_for(lambda: len(worker.registered()) == 3, 90, "three registrations")
            running.wait_for(lambda: running.count("handoff.sent") == 6, 60, "6 deliveries")
            assert running.stop() == 0
    assert worker.refused() == []
    registered = {r["pacs_name"]: r for r in worker.registered()}
    assert sorted(registered) == ["FALLBACK", "MY_PACS", "ORTHANC"]
    assert registered["ORTHANC"]["ndicom"] == 5
    assert registered["MY_PACS"]["ndicom"] == 3
    assert registered["FALLBACK"]["ndicom"] == 1
    for name, registration in registered.items():
        assert registration["path"].startswith(f"SERVICES/PACS/{name}/")
        assert (storage / registration["path"]).is_dir()
    subjects = {topic for topic, data in subscriber.messages if data == b"\x00"}
    assert subjects == {
        f"oxidicom.{name}.{registration['SeriesInstanceUID'].replace('.', '_')}"
        for name, registration in registered.items()
    }


def test_the_sender_folder_rule_needs_cubes_folder_of_pacs(tmp_path: Path) -> None:
    from watcher import ConfigError, parse_settings  # noqa: PLC0415
    from watcher._handoff_setup import build_handoff  # noqa: PLC0415
    from watcher._metrics import Metrics  # noqa: PLC0415

    from .test_outcomes import Log  # noqa: PLC0415

    argv = ["--pacs-name", "X", "--pacs-name-from", "caller", "--celery-broker", "memory://"]
    wrong = parse_settings([*argv, "--datadir", str(tmp_path / "SERVICES/PACS/X")], {})
    with pytest.raises(ConfigError, match="folder of PACS") as raised:
        build_handoff(wrong, Metrics(), Log())
    assert "SERVICES/PACS" in raised.value.hint
    with pytest.raises(ConfigError, match="need --pacs-name"):
        build_handoff(parse_settings(["--pacs-name-from", "caller"], {}), Metrics(), Log())
    right = parse_settings([*argv, "--datadir", str(tmp_path / "SERVICES/PACS")], {})
    handoff = build_handoff(right, Metrics(), Log())
    assert handoff is not None
    handoff.stop(1)
