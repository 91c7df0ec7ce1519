"""The repack worker process: ``python -P .../watcher/_worker_main.py PACKAGES FD``.

``PACKAGES`` is the folder the parent imported this package from (parent and
worker run the same code, installed or not), ``FD`` one end of a socket pair
(see :func:`watcher._child.serve`). A plain child rather than
:mod:`multiprocessing`'s spawn, which adds a resource-tracker process (13 MB)
and re-imports the parent's main module. Signals are set before the heavy
imports: the parent decides when a worker stops.
"""

import os
import signal
import sys


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGIO, signal.SIG_IGN)  # a lease break must never kill a worker
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: _worker_main.py PACKAGES FD (started by pypx-listener)", file=sys.stderr)
        return 2
    packages = os.path.realpath(argv[0])
    if packages not in {os.path.realpath(entry) for entry in sys.path}:
        # A source tree (installed packages are on the path already, in their place).
        sys.path.insert(0, packages)
    from multiprocessing.connection import Connection  # noqa: PLC0415 - after the signals

    from watcher._child import serve  # noqa: PLC0415

    serve(Connection(int(argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
