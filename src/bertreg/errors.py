"""One kind of error for bad user input, and the wrapper that turns it into one line and exit code 2."""

from __future__ import annotations

import sys
from typing import Callable


class UserError(Exception):
    """Bad input from the user: reported as one line, never as a traceback."""


def cli(main: Callable[[], object]) -> None:
    """Run an entry script's main(); a UserError becomes `error: ...` on stderr and exit code 2."""
    try:
        main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)
