"""``python -m router`` is the same as the ``router`` command."""

from .cli import main

main()
