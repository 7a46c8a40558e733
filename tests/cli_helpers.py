"""Run ``router ARGS`` as the installed command does, in-process: through ``router.cli.main``, which prints a
RouterError as one ``error: ...`` line with exit status 2 (``CliRunner().invoke(app, ...)`` skips that step)."""

from __future__ import annotations

import sys
from unittest import mock

from typer.testing import CliRunner

from router.cli import main


def router_main(*args: str) -> tuple[int, str]:
    """(exit status, stdout and stderr together) of ``router ARGS``."""
    with CliRunner().isolation() as (_out, _err, mixed), mock.patch.object(sys, "argv", ["router", *args]):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        sys.stdout.flush()
        sys.stderr.flush()
        return code, mixed.getvalue().decode()
