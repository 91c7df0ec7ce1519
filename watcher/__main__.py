"""``python -m watcher``: the same as the ``pypx-listener`` command."""

from ._cli import main

main()
