"""``python -m repack``: the same as the ``pypx-repack`` command."""

from ._cli import main

main()
