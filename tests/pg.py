"""A throwaway PostgreSQL server for tests: initdb into a temp folder, listen on 127.0.0.1 only.

Needs Debian's `postgresql` package (its binaries in /usr/lib/postgresql/<version>/bin). Missing
binaries fail the test under CI (CI=true) and skip it elsewhere. PostgreSQL refuses to run as
root, so as root the server runs as the `postgres` user, in a temp folder that user owns.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from conftest import free_port


def bin_dir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


@contextlib.contextmanager
def postgres_server(user: str = "bertreg", database: str = "optuna") -> Iterator[str]:
    """Start a server on a free loopback port with one database; yield its URL; stop and delete it."""
    bins = bin_dir()
    if bins is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("PostgreSQL binaries missing under CI: apt-get install -y postgresql")
        pytest.skip("PostgreSQL binaries not installed (apt-get install postgresql)")
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    root = Path(tempfile.mkdtemp(prefix="bertreg-pg-"))
    if as_root:
        shutil.chown(root, "postgres", "postgres")
    pgdata, port = root / "data", free_port()

    def pg(tool: str, *args: str) -> None:
        res = subprocess.run([*prefix, str(bins / tool), *args], capture_output=True, text=True, timeout=60)
        if res.returncode:
            log = root / "log"
            raise RuntimeError(f"{tool} failed: {res.stderr.strip()}\n{log.read_text() if log.is_file() else ''}")

    try:
        # trust on loopback only: a test server holding nothing, gone when the test ends
        pg("initdb", "-D", str(pgdata), "-U", user, "-A", "trust", "--no-sync", "-E", "UTF8")
        pg("pg_ctl", "-D", str(pgdata), "-l", str(root / "log"), "-w", "-t", "30", "start", "-o",
           f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=50")
        try:
            pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", user, database)
            yield f"postgresql+psycopg2://{user}@127.0.0.1:{port}/{database}"
        finally:
            pg("pg_ctl", "-D", str(pgdata), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url
