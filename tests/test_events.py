"""repack._events and the pydicom warnings hook (repack._values): one event per line, one hook.

Each case runs in a fresh interpreter: structlog's configuration and the
warning hook are process-wide.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
import textwrap

import orjson

from repack import Event


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60, check=True)  # fmt: skip


def test_every_event_name_is_declared_once_as_area_dot_name() -> None:
    values = [event.value for event in Event]
    assert len(values) == len(set(values))
    assert all(value.count(".") == 1 and value == value.lower() for value in values)


def test_json_lines_carry_an_iso_utc_timestamp_and_the_level() -> None:
    shown = run("""
        from repack import Event, configure_logging, get_logger
        configure_logging(json=True, level="info")
        get_logger(component="test").info(Event.SERIES_COMPLETE, instances=3)
        get_logger().debug(Event.REPACK_BUSY, src="left out below info")
    """)
    (line,) = shown.stdout.splitlines()
    event = orjson.loads(line)
    assert event["event"] == "series.complete"
    assert (event["level"], event["component"], event["instances"]) == ("info", "test", 3)
    stamp = datetime.datetime.fromisoformat(event["timestamp"])
    assert stamp.utcoffset() == datetime.timedelta(0)


def test_stdlib_logging_and_python_warnings_become_events_of_the_same_stream() -> None:
    shown = run("""
        import logging, warnings
        from repack import configure_logging
        configure_logging(json=True)
        logging.getLogger("watchdog.observers").warning("inotify limit reached")
        warnings.warn("something deprecated", DeprecationWarning, stacklevel=1)
    """)
    events = [orjson.loads(line) for line in shown.stdout.splitlines()]
    assert events[0]["event"] == "inotify limit reached"
    assert events[0]["logger"] == "watchdog.observers"
    assert "something deprecated" in events[1]["event"]
    assert shown.stderr == ""


def test_pydicom_messages_are_collected_per_file_and_counted_and_forwarded_outside() -> None:
    shown = run("""
        import logging, warnings
        from repack import configure_logging
        from repack.plumbing import collected_warnings
        from repack._values import warning_count as count
        configure_logging(json=True)
        before = count()
        with collected_warnings() as messages:
            logging.getLogger("pydicom").warning("bad value")
            warnings.warn_explicit("odd charset", UserWarning, "/x/pydicom/charset.py", 1)
        print(messages, count() - before, flush=True)
        logging.getLogger("pydicom").warning("outside any file")
    """)
    first, forwarded = shown.stdout.splitlines()
    assert first == "['bad value', 'odd charset'] 2"
    assert orjson.loads(forwarded)["event"] == "outside any file"


def test_a_closed_stream_is_reported_once_and_never_raises() -> None:
    shown = subprocess.run(
        [sys.executable, "-c", textwrap.dedent("""
            import os, sys
            from repack import configure_logging, get_logger
            lost = []
            configure_logging(json=True, on_output_lost=lambda: lost.append(1))
            os.close(1)
            r, w = os.pipe(); os.close(r); os.dup2(w, 1)
            for _ in range(3):
                get_logger().info("after the reader left")
            print(len(lost), file=sys.stderr, flush=True)
            os._exit(0)  # the interpreter's own last flush of stdout would meet the closed pipe
        """)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert shown.stderr.strip() == "1"


def test_a_terminal_gets_readable_lines_not_json() -> None:
    shown = run("""
        import io, sys
        from repack import configure_logging, get_logger
        configure_logging(json=False, stream=sys.stdout)
        get_logger().info("watcher.started", workers=2)
    """)
    assert "watcher.started" in shown.stdout
    assert "workers" in shown.stdout
    assert not shown.stdout.lstrip().startswith("{")
