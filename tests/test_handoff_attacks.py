"""The hand-off under attack: hostile values, a tampered outbox, bad peers, secrets.

Each test is an attack that once worked (issue 28): a tag value that forged a
NATS message, a record that stopped its destination for good, a redirect
counted as a delivery, a password printed and stored, a command that inherited
every secret, read 1 GiB of stderr into memory, or outlived the service.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from watcher._cube import valid_uid
from watcher._destinations import Command, DeliveryError, Webhook, redacted
from watcher._handoff import DEAD_LETTER, Handoff
from watcher._lonk import lonk_subject
from watcher._metrics import Metrics
from watcher._settings import parse_settings

from .brokers import Webhook as WebhookServer
from .helpers import wait_for
from .test_outcomes import Log

_SUBJECT_TOKEN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def _document(uid: str = "1.2.3.4", **fields: Any) -> dict[str, Any]:
    return {
        "SeriesInstanceUID": uid,
        "StudyInstanceUID": "1.2.3",
        "PatientID": "P1",
        "ndicom": 1,
        "path": "SERVICES/PACS/PYPX/x",
        "tags": {"StudyDate": "20240101"},
        **fields,
    }


# -- 1. injection through tag values ----------------------------------------------


@given(st.text(), st.text())
def test_a_lonk_subject_is_three_tokens_whatever_the_values(pacs: str, uid: str) -> None:
    subject = lonk_subject(pacs, uid)
    prefix, *tokens = subject.split(".")
    assert prefix == "oxidicom"
    assert len(tokens) == 2
    assert all(set(token) <= _SUBJECT_TOKEN for token in tokens)


@pytest.mark.parametrize(
    "uid",
    ["1.2\r\nPUB oxidicom.PYPX.9 1\r\nx", "1.2\t3", "1.2 3", "1." + "2" * 6000, "", "1..2",
     "01.2", "1.2.", "abc"],
)  # fmt: skip
def test_an_invalid_uid_is_refused_for_cube_and_for_nats(uid: str) -> None:
    from watcher._destinations import CeleryRegistration  # noqa: PLC0415
    from watcher._lonk import LonkDone  # noqa: PLC0415

    assert not valid_uid(uid)
    celery = CeleryRegistration("memory://", "main2", "PYPX")
    try:
        assert celery.refuses(_document(uid)) is not None
        assert celery.refuses(_document(StudyInstanceUID=uid)) is not None
    finally:
        celery.close()
    assert LonkDone.refuses(LonkDone.__new__(LonkDone), _document(uid)) is not None


def test_valid_uids_pass() -> None:
    assert valid_uid("1.2.840.10008.5.1.4.1.1.4")
    assert valid_uid("0.1")
    assert valid_uid("1." + "2" * 62)
    assert not valid_uid("1." + "2" * 63)  # 65 characters


def test_a_nul_in_a_value_does_not_stop_the_command(tmp_path: Path) -> None:
    """A PatientID with a NUL: the variable is left out, the command runs, the JSON has it."""
    out = tmp_path / "out"
    command = Command(["sh", "-c", f'cat > {out}; echo "$PYPX_SERIES_PATIENT_ID" >> {out}.env'])
    command.deliver("k1", _document(PatientID="P\x001"))
    assert orjson.loads(out.read_bytes())["PatientID"] == "P\x001"
    assert (tmp_path / "out.env").read_text() == "\n"


# -- 2. one record never stops a destination ---------------------------------------


def _hand_off(tmp_path: Path, argv: list[str]) -> tuple[Handoff, Log, Path]:
    log = Log()
    handoff = Handoff(tmp_path / "log", [Command(argv)], metrics=Metrics(), log=log)
    folder = tmp_path / "log" / "outbox" / "command"
    folder.mkdir(parents=True)
    return handoff, log, folder


def test_bad_entries_in_the_outbox_are_set_aside_and_the_good_one_goes(tmp_path: Path) -> None:
    received = tmp_path / "received"
    handoff, log, folder = _hand_off(tmp_path, ["sh", "-c", f"cat >> {received}"])
    (folder / "0-not-json.json").write_bytes(b"{not json")
    (folder / "1-wrong-types.json").write_bytes(orjson.dumps({"key": 1, "series": []}))
    (folder / "2-a-list.json").write_bytes(b"[]")
    (folder / "3-folder.json").mkdir()
    os.mkfifo(folder / "4-fifo.json")
    with (folder / "5-huge.json").open("wb") as huge:
        huge.truncate(20 * 1024 * 1024)
    outside = tmp_path / "outside.json"
    outside.write_bytes(b"{}")
    os.link(outside, folder / "6-hard-link.json")
    key = handoff.series_complete(_document())
    started = time.monotonic()
    handoff.deliver_due()
    assert time.monotonic() - started < 10  # the FIFO hung nothing
    assert orjson.loads(received.read_bytes())["SeriesInstanceUID"] == "1.2.3.4"
    assert sorted(os.listdir(folder)) == []
    dead = sorted(os.listdir(tmp_path / "log" / "outbox" / DEAD_LETTER / "command"))
    assert len(dead) == 7
    assert log.events().count("handoff.dead_lettered") == 7
    assert "handoff.sent" in log.events()
    assert "handoff.crashed" not in log.events()
    assert outside.read_bytes() == b"{}"  # the hard link's other name is untouched
    assert key


def test_a_permanent_refusal_is_set_aside_and_readiness_stays(tmp_path: Path) -> None:
    """A record CUBE can never take (here: written before the rule, with a forged UID)."""
    from watcher._destinations import CeleryRegistration  # noqa: PLC0415

    log = Log()
    celery = CeleryRegistration("memory://", "main2", "PYPX")
    handoff = Handoff(tmp_path / "log", [celery], metrics=Metrics(), log=log)
    folder = tmp_path / "log" / "outbox" / "celery"
    folder.mkdir(parents=True)
    record = {"key": "k", "destination": "celery", "created": 0, "attempts": 0, "due": 0,
              "first_failure": None, "last_error": None, "series": _document("1.2\n3")}  # fmt: skip
    (folder / "k.json").write_bytes(orjson.dumps(record))
    handoff.deliver_due()
    assert log.events() == ["handoff.dead_lettered"]
    assert handoff.problems() == []
    celery.close()


# -- 4. a redirect is not a delivery --------------------------------------------


def test_a_redirect_is_a_failure_and_the_record_stays(tmp_path: Path) -> None:
    with WebhookServer(redirect=True) as hook:
        log = Log()
        handoff = Handoff(tmp_path / "log", [Webhook(hook.url)], metrics=Metrics(), log=log)
        (tmp_path / "log" / "outbox" / "webhook").mkdir(parents=True)
        handoff.series_complete(_document())
        handoff.deliver_due()
        assert hook.attempts == 1
        assert hook.gets == 0  # not followed as a GET
    assert log.events() == ["handoff.retry"]
    assert "302" in log.lines[0][2]["error"]
    assert len(os.listdir(tmp_path / "log" / "outbox" / "webhook")) == 1


# -- 6. secrets ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:s3cret@hook.example/x?token=abc&b=2", "https://***@hook.example/x?token=***&b=***"),
        ("nats://t0ken@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
        ("redis://:pw@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
        ("http://127.0.0.1:9/x", "http://127.0.0.1:9/x"),
    ],
)  # fmt: skip
def test_a_url_is_shown_without_its_secrets(url: str, shown: str) -> None:
    assert redacted(url) == shown


def test_no_secret_in_retries_stored_errors_or_the_start_event(tmp_path: Path) -> None:
    url = "http://user:s3cret@127.0.0.1:9/x?token=t0ken"
    log = Log()
    handoff = Handoff(tmp_path / "log", [Webhook(url)], metrics=Metrics(), log=log)
    (tmp_path / "log" / "outbox" / "webhook").mkdir(parents=True)
    handoff.series_complete(_document())
    handoff.deliver_due()
    (record_path,) = (tmp_path / "log" / "outbox" / "webhook").iterdir()
    stored = record_path.read_text()
    said = repr(log.lines)
    for secret in ("s3cret", "t0ken"):
        assert secret not in stored
        assert secret not in said
    assert record_path.stat().st_mode & 0o777 == 0o600
    cluster = "nats://t0ken@127.0.0.1:4222,nats://lonk:s3cret@127.0.0.1:4223"
    settings = parse_settings(["--webhook-url", url, "--nats-url", cluster], environ={})
    described = repr(settings.describe())
    assert "s3cret" not in described
    assert "t0ken" not in described
    assert "127.0.0.1:4223" in described


@pytest.mark.parametrize("option", ["--nats-nkey", "--nats-creds"])
def test_a_credentials_file_that_cannot_be_read_ends_the_start(tmp_path: Path, option: str) -> None:
    from watcher import ConfigError  # noqa: PLC0415
    from watcher._handoff_setup import build_handoff  # noqa: PLC0415

    argv = ["--logdir", str(tmp_path), "--pacs-name", "PYPX", "--nats-url", "nats://127.0.0.1:9"]
    settings = parse_settings([*argv, option, str(tmp_path / "absent")], environ={})
    with pytest.raises(ConfigError, match=f"{option} .*absent: No such file") as raised:
        build_handoff(settings, Metrics(), Log())
    assert "readable" in raised.value.hint


def test_the_command_gets_only_its_documented_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYPX_LISTENER_CELERY_BROKER", "redis://:pw@127.0.0.1/0")
    monkeypatch.setenv("SOME_PASSWORD", "s3cret")
    out = tmp_path / "env"
    Command(["sh", "-c", f"env > {out}"]).deliver("k", _document())
    names = {line.split("=", 1)[0] for line in out.read_text().splitlines()}
    assert "SOME_PASSWORD" not in names
    assert "PYPX_LISTENER_CELERY_BROKER" not in names
    assert {"PATH", "PYPX_SERIES_KEY", "PYPX_SERIES_SERIES_INSTANCE_UID"} <= names


# -- 7. bounded memory and processes -------------------------------------------------------


def test_a_command_that_floods_stderr_is_read_bounded() -> None:
    flood = "import sys; sys.stderr.write('x' * (1 << 20) * 256 + '\\nlast words'); sys.exit(3)"
    command = Command([sys.executable, "-c", flood])
    with pytest.raises(Exception, match="exited 3: last words") as raised:
        command.deliver("k", _document())
    assert len(str(raised.value)) < 400


def test_stopping_ends_a_running_command_and_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    command = Command(["sh", "-c", f"sleep 300 & echo $! > {pids}; wait"])
    import threading  # noqa: PLC0415

    errors: list[BaseException] = []

    def deliver() -> None:
        try:
            command.deliver("k", _document())
        except Exception as error:
            errors.append(error)

    thread = threading.Thread(target=deliver)
    thread.start()
    wait_for(lambda: pids.exists() and pids.read_text().strip() != "", 10, "the child")
    child = int(pids.read_text())
    command.close()
    thread.join(10)
    assert not thread.is_alive()
    assert errors  # killed: not delivered
    wait_for(lambda: _gone(child), 10, "the child ended")


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return True
    return state == "Z"


def test_celery_headers_carry_no_patient_data() -> None:
    """Celery's default argsrepr/kwargsrepr repeat every argument in the message headers."""
    from watcher._destinations import CeleryRegistration  # noqa: PLC0415

    celery = CeleryRegistration("memory://", "main2", "PYPX")
    try:
        series = _document(tags={"StudyDate": "20240101", "PatientName": "Doe^Jane"})
        celery.deliver("key-1", series)
        with celery.app.connection_for_write() as connection:
            queue = connection.SimpleQueue("main2")
            message = queue.get(timeout=5)
            headers = message.headers
            body = message.decode() if hasattr(message, "decode") else message.payload
            queue.close()
    finally:
        celery.close()
    assert "Doe" not in repr(headers)
    assert "P1" not in repr(headers)
    assert "1.2.3.4" in headers["kwargsrepr"]
    assert "Doe^Jane" in repr(body)  # the task itself has them


# -- issue 29: instances after the registration -------------------------------------------------


def test_instances_after_the_registration_are_an_error_not_a_second_registration(
    tmp_path: Path,
) -> None:
    """CUBE refuses a second registration: 8 registered, 2 more arrive -> series.late names
    the 2, the other destinations hear of it (a LONK error), no second Celery record."""
    from watcher._destinations import CeleryRegistration  # noqa: PLC0415

    folder = tmp_path / "data" / "series"
    folder.mkdir(parents=True)
    for number in range(8):
        (folder / f"{number:04d}.dcm").write_bytes(b"x")
    log, metrics = Log(), Metrics()
    celery = CeleryRegistration("memory://", "main2", "PYPX")
    handoff = Handoff(tmp_path / "log", [celery, Command(["true"])], metrics=metrics, log=log)
    outbox = tmp_path / "log" / "outbox"
    for name in ("celery", "command"):
        (outbox / name).mkdir(parents=True)
    try:
        handoff.series_complete(_document(folder=str(folder), ndicom=8))
        assert len(os.listdir(outbox / "celery")) == 1
        handoff.series_complete(_document(folder=str(folder), ndicom=8))  # sent again, same
        assert "series.late" not in log.events()
        for number in (8, 9):
            (folder / f"{number:04d}.dcm").write_bytes(b"x")
        handoff.series_complete(_document(folder=str(folder), ndicom=10))
    finally:
        celery.close()
    assert len(os.listdir(outbox / "celery")) == 1  # the first registration only
    (late,) = [fields for _, event, fields in log.lines if event == "series.late"]
    assert late["files"] == ["0008.dcm", "0009.dcm"]
    assert (late["registered"], late["unknown_to_cube"]) == (8, 2)
    records = [orjson.loads(p.read_bytes()) for p in (outbox / "command").iterdir()]
    told = [record["series"] for record in sorted(records, key=lambda r: r["created"])]
    assert [series.get("error") for series in told][:2] == [None, None]
    assert "after the series was registered" in told[2]["error"]
    assert "pypx_listener_series_late_total 1.0" in metrics.render().decode()


@pytest.mark.parametrize(("umask", "deleted"), [("002", True), ("022", False)])
def test_cube_as_another_user_of_the_group_can_delete_what_was_registered(
    umask: str, deleted: bool, example_files: list[Path]
) -> None:
    """CUBE deletes a series it registered (rows and files). It runs as another user: with
    ``--umask 002`` and a shared group it can; with 022 it gets PermissionError."""
    import shutil  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    from .listener import listener  # noqa: PLC0415

    root = Path(tempfile.mkdtemp(prefix="pypx-group-"))
    os.chmod(root, 0o755)  # noqa: S103 - the other user must reach the data tree
    try:
        with listener(root, "--settle", "0.2", "--umask", umask) as running:
            (running.incoming).mkdir(exist_ok=True)
            shutil.copyfile(example_files[0], running.incoming / "MR.1")
            running.wait_for(lambda: running.count("repack.done") == 1, 30, "repack.done")
        (patient,) = running.data.iterdir()
        as_cube = ("setpriv", "--reuid", "4321", "--regid", "0", "--clear-groups")
        result = subprocess.run(
            [*as_cube, "rm", "-r", str(patient)], capture_output=True, text=True, check=False
        )
        assert (result.returncode == 0) is deleted, result.stderr
        assert patient.exists() is not deleted
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- 5. the outbox is a folder someone else can write --------------------------------


def _record(uid: str = "1.2.3.4") -> bytes:
    return orjson.dumps({"key": "k", "destination": "command", "created": 0, "attempts": 0,
                         "due": 0, "first_failure": None, "last_error": None,
                         "series": _document(uid)})  # fmt: skip


@pytest.mark.parametrize("linked", ["outbox/command", "outbox"])
def test_a_link_in_the_outbox_is_never_followed(tmp_path: Path, linked: str) -> None:
    outside = tmp_path / "outside"
    (outside / "command").mkdir(parents=True)
    (outside / "command" / "x.json").write_bytes(_record())
    received = tmp_path / "received"
    log = Log()
    handoff = Handoff(
        tmp_path / "log", [Command(["sh", "-c", f"cat >> {received}"])], metrics=Metrics(), log=log
    )
    (tmp_path / "log").mkdir()
    if linked == "outbox":
        (tmp_path / "log" / "outbox").symlink_to(outside)
    else:
        (tmp_path / "log" / "outbox").mkdir()
        (tmp_path / "log" / "outbox" / "command").symlink_to(outside / "command")
    handoff.deliver_due()
    handoff.deliver_due()
    assert not received.exists()
    assert (outside / "command" / "x.json").read_bytes() == _record()  # not taken, not moved
    assert log.events() == ["handoff.outbox_unsafe"]  # said once
    assert any("not followed" in problem for problem in handoff.problems())


def test_a_start_meets_fifos_bad_marks_and_marks_pointing_outside(tmp_path: Path) -> None:
    from watcher._series import SeriesTracker  # noqa: PLC0415

    log = Log()
    data = tmp_path / "data"
    handoff = Handoff(
        tmp_path / "log", [Command(["true"])], metrics=Metrics(), log=log, datadir=data
    )
    receiving = tmp_path / "log" / "outbox" / ".receiving"
    receiving.mkdir(parents=True)
    os.mkfifo(receiving / "fifo.json")
    (receiving / "not-json.json").write_bytes(b"{")
    (receiving / "no-folder.json").write_bytes(orjson.dumps({"SeriesInstanceUID": "1.2"}))
    good = {"SeriesInstanceUID": "1.2.3", "folder": str(data / "p" / "s"), "log_path": "",
            "PatientID": "P", "StudyInstanceUID": "1.2"}  # fmt: skip
    (receiving / "outside.json").write_bytes(orjson.dumps({**good, "folder": "/etc"}))
    (receiving / "good.json").write_bytes(orjson.dumps(good))
    series = SeriesTracker(0)  # every series it adopts is quiet at once
    started = time.monotonic()
    handoff.start(series)
    try:
        assert time.monotonic() - started < 5  # the FIFO hung nothing
        assert len(series.take_quiet()) == 1  # the good mark only
        assert log.events().count("handoff.adopted") == 1
        assert log.events().count("handoff.dead_lettered") == 3
        assert (receiving / "fifo.json").exists()  # not a file: left, never read
    finally:
        handoff.stop(5)


# -- 3. peers that trickle or flood -------------------------------------------------------


class _Peer:
    """A loopback server that reads the request, then answers with ``answer(connection)``."""

    def __init__(self, answer: Any) -> None:
        import socket  # noqa: PLC0415
        import threading  # noqa: PLC0415

        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.requests: list[bytes] = []
        self.stop = threading.Event()

        def serve() -> None:
            while not self.stop.is_set():
                try:
                    connection, _ = self.server.accept()
                except OSError:
                    return
                with connection:
                    connection.settimeout(5)
                    self.requests.append(connection.recv(65536))
                    with contextlib.suppress(OSError):
                        answer(connection, self.stop)

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.server.close()
        self.thread.join(10)


def _trickle(connection: Any, stop: Any) -> None:
    for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
        if stop.wait(0.5):
            return
        connection.sendall(bytes([byte]))


def _flood(connection: Any, stop: Any) -> None:
    connection.sendall(b"HTTP/1.1 200 OK\r\nX-Flood: ")
    while not stop.is_set():
        connection.sendall(b"x" * 65536)


@pytest.mark.parametrize("answer", [_trickle, _flood], ids=["trickle", "flood"])
def test_a_webhook_that_trickles_or_floods_fails_within_one_deadline(answer: Any) -> None:
    peer = _Peer(answer)
    try:
        hook = Webhook(f"http://127.0.0.1:{peer.port}/x", timeout=2)
        started = time.monotonic()
        with pytest.raises(Exception, match=r"127\.0\.0\.1"):
            hook.deliver("k", _document())
        assert time.monotonic() - started < 5
    finally:
        peer.close()


def _trickle_forever(connection: Any, stop: Any) -> None:
    """A byte at a time, never a whole answer (a Redis reply or an AMQP frame)."""
    connection.sendall(b"\x01\x00\x00\x00\x00\x00\xff")  # an AMQP frame of 255 bytes
    while not stop.wait(0.2):
        connection.sendall(b"+")


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
def test_a_broker_that_trickles_fails_within_one_deadline_and_holds_no_second_send(
    scheme: str,
) -> None:
    """kombu's timeouts hold per read: a broker that answers a byte at a time held the
    hand-off for ever. One deadline for the whole exchange, and while that send has not
    returned, no second connection is made (at most one thread waits on a broker)."""
    from watcher._destinations import CeleryRegistration  # noqa: PLC0415

    peer = _Peer(_trickle_forever)
    celery = CeleryRegistration(
        f"{scheme}://guest:s3cret@127.0.0.1:{peer.port}//", "main2", "PYPX", timeout=2
    )
    try:
        started = time.monotonic()
        with pytest.raises(DeliveryError, match=r"no whole answer within 2 s") as first:
            celery.deliver("k1", _document())
        assert time.monotonic() - started < 5
        assert "s3cret" not in str(first.value)
        with pytest.raises(DeliveryError, match="the send before this one") as second:
            celery.deliver("k2", _document())
        assert "s3cret" not in str(second.value)
        assert len(peer.requests) == 1
    finally:
        peer.close()  # the trickle ends: so does the send left waiting on it
        celery.close()


def test_a_trickling_broker_does_not_hold_the_other_destinations(tmp_path: Path) -> None:
    """The hand-off goes on past a broker that trickles: the webhook gets the series, the
    registration is retried (an event each time), and a stop is not held up by it."""
    from watcher._destinations import CeleryRegistration  # noqa: PLC0415

    peer = _Peer(_trickle_forever)
    log = Log()
    with WebhookServer() as hook:
        celery = CeleryRegistration(f"redis://127.0.0.1:{peer.port}/0", "main2", "PYPX", timeout=1)
        handoff = Handoff(tmp_path / "log", [celery, Webhook(hook.url)], metrics=Metrics(), log=log)
        handoff.folder.mkdir(parents=True)
        try:
            handoff.series_complete(_document())
            handoff.deliver_due()
            assert "handoff.retry" in log.events()
            assert len(hook.received) == 1
            started = time.monotonic()
            handoff.stop(10)
            assert time.monotonic() - started < 3
        finally:
            peer.close()
    assert os.listdir(tmp_path / "log" / "outbox" / "celery")  # kept for the next start


def test_a_webhook_url_with_credentials_authenticates_without_showing_them() -> None:
    def ok(connection: Any, _stop: Any) -> None:
        connection.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")

    peer = _Peer(ok)
    try:
        Webhook(f"http://lonk:s3cret@127.0.0.1:{peer.port}/x?a=1").deliver("k", _document())
    finally:
        peer.close()
    (request,) = peer.requests
    assert request.startswith(b"POST /x?a=1 HTTP/1.1\r\n")
    assert b"Authorization: Basic bG9uazpzM2NyZXQ=\r\n" in request  # lonk:s3cret


@pytest.mark.parametrize(
    "hostile",
    [{"StudyDate": ""}, {"PatientID": ""}, {"SeriesInstanceUID": "1.2.3\t4"}],
    ids=["no-study-date", "no-patient-id", "invalid-uid"],
)
def test_what_cube_would_refuse_never_enters_its_storage(
    tmp_path: Path, hostile: dict[str, str]
) -> None:
    """With the CUBE destination, an instance of a series CUBE would refuse goes to the
    quarantine (``refused-by-cube``), not below ``SERVICES/PACS/<pacs>/``: CUBE would never
    register it there. A good instance beside it is repacked as always."""
    from .conftest import write_dicom  # noqa: PLC0415
    from .helpers import FAST  # noqa: PLC0415
    from .listener import listener  # noqa: PLC0415
    from .test_handoff import Cube  # noqa: PLC0415

    cube = Cube(tmp_path)
    with listener(tmp_path, *FAST, *cube.args("redis://127.0.0.1:9/0")) as running:
        write_dicom(running.incoming / "MR.bad", SOPInstanceUID="1.2.9.1", **hostile)
        write_dicom(running.incoming / "MR.good", SOPInstanceUID="1.2.9.2")
        running.wait_for(lambda: running.count("repack.failed") == 1, 30, "the refusal")
        running.wait_for(lambda: running.count("repack.done") == 1, 30, "the good one")
    (failed,) = running.of("repack.failed")
    assert failed["reason"] == "refused-by-cube"
    assert "CUBE needs" in failed["error"]
    stored = sorted(p.name for p in cube.datadir.rglob("*.dcm"))
    assert len(stored) == 1
    assert "1.2.9.2" in stored[0]
