"""Stop requests: SIGTERM, SIGINT and train.time_limit become one decision every process shares.

A signal only sets a flag. The training loop polls it after each optimizer step, saves a
checkpoint and raises Interrupted, so the step in flight finishes and the state on disk is whole.
Under several processes each poll all-reduces the flag (one integer, the max), so all of them stop
at the same step even when only one got the signal, and none waits in a collective the others left.
"""

from __future__ import annotations

import signal
import sys
import threading
import time

import torch
from accelerate import Accelerator

from bertreg.errors import Interrupted

# The code of a reason is its index; when processes disagree the highest code wins.
_REASONS = ("", "time limit", "SIGINT", "SIGTERM")
# 128 + signal number, as a shell reports a process killed by it; 124 as timeout(1) does.
EXIT_CODES = {"time limit": 124, "SIGINT": 130, "SIGTERM": 143}
_FORCE_AFTER_S = 2.0  # a repeated Ctrl-C after this long stops at once (a launcher may forward one copy)


class StopRequests:
    """Catches SIGTERM/SIGINT while active (a `with` block) and watches the time limit (seconds from now)."""

    def __init__(self, time_limit: float | None, accelerator: Accelerator):
        self.accelerator = accelerator
        self.deadline = None if time_limit is None else time.monotonic() + time_limit
        self.signal: str | None = None
        self._signal_at = 0.0
        self._previous: dict[int, object] = {}
        self._last_poll = time.monotonic()
        self.slowest_step = 0.0

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # Python installs handlers there only
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame: object) -> None:
        now = time.monotonic()
        if self.signal is None:
            self.signal, self._signal_at = signal.Signals(signum).name, now
            if self.accelerator.is_main_process:
                print(f"\n{self.signal} received: stopping after the current step, once the state is saved"
                      " (Ctrl-C again to stop at once, losing it)", file=sys.stderr, flush=True)
        elif signum == signal.SIGINT and now - self._signal_at > _FORCE_AFTER_S:
            raise KeyboardInterrupt

    def restart_clock(self) -> None:
        """Called as a fold's loop starts, so model building does not count as a step."""
        self._last_poll = time.monotonic()

    def poll(self) -> str | None:
        """The reason to stop now shared by all processes, or None. Call it at every optimizer step.

        The time limit stops the run once less than three of its slowest steps are left (an
        evaluation or a checkpoint save counts within its step): one to finish, one to save, one spare.
        """
        now = time.monotonic()
        self.slowest_step = max(self.slowest_step, now - self._last_poll)
        self._last_poll = now
        code = _REASONS.index(self.signal) if self.signal else 0
        if not code and self.deadline is not None and self.deadline - now < 3 * self.slowest_step:
            code = _REASONS.index("time limit")
        if self.accelerator.num_processes > 1:
            flag = torch.tensor(code, device=self.accelerator.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            code = int(flag.item())
        return _REASONS[code] or None


def interrupted(reason: str, message: str) -> Interrupted:
    return Interrupted(f"{reason}: {message}", EXIT_CODES[reason])
