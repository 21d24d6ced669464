"""One run per experiment folder: {experiment}/.lock is held (flock) by the process training it.

The kernel drops an flock when its holder dies, even by kill -9, so a lock left by a dead run is
simply taken over; the file only tells the second process who holds it (pid and host). The file
is never deleted: deleting it would let a waiting process lock an orphaned copy.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path
from typing import Iterator

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from bertreg.errors import UserError

LOCK_FILE = ".lock"


def _acquire(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = path.read_text(encoding="utf-8", errors="replace").strip() or "another process"
        os.close(fd)
        raise UserError(f"{out} is being trained by {owner} (lock {path}): wait for that run to end, "
                        f"or stop it, or choose another experiment name") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    return fd


@contextlib.contextmanager
def experiment_lock(out: Path, accelerator: Accelerator) -> Iterator[None]:
    """Hold the experiment's lock for the block; the main process holds it for all of them.

    If it is taken, every process raises the same UserError, so none is left waiting for the others.
    """
    fd, error = None, None
    if accelerator.is_main_process:
        try:
            fd = _acquire(out)
        except UserError as err:
            error = str(err)
    if accelerator.num_processes > 1:
        error = broadcast_object_list([error])[0]
    if error:
        raise UserError(error)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)
