"""One kind of error for bad user input, and the wrapper that turns it into one line and exit code 2."""

from __future__ import annotations

import os
import sys
from typing import Callable


class UserError(Exception):
    """Bad input from the user: reported as one line, never as a traceback."""


class Interrupted(Exception):
    """The run stopped on request (a signal, the time limit) after saving its state: rerun to resume."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def cli(main: Callable[[], object]) -> None:
    """Run an entry script's main(); a UserError becomes `error: ...` on stderr and exit code 2,
    an Interrupted run `stopped: ...` and its own exit code (printed by the main process only)."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Interrupted as err:
        if os.environ.get("RANK", "0") == "0":
            print(f"stopped: {err}", file=sys.stderr, flush=True)
        sys.exit(err.exit_code)
