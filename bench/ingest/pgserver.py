"""A throw-away PostgreSQL server for the benchmarks (initdb + pg_ctl in a temporary folder).

PostgreSQL refuses to run as root: as root the server runs as the ``postgres``
user (see ../shared/ENVIRONMENT.md).  Loopback only, an unusual port, and
removed again by :meth:`PgServer.stop`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    path = found[-1] if found else shutil.which(name)
    if not path:
        raise RuntimeError(f"PostgreSQL's {name} not found")
    return path


class PgServer:
    def __init__(self, port: int = 55432):
        self.port = port
        self.root = Path(tempfile.mkdtemp(prefix="hilum-bench-pg-"))
        self.user: str | None = None

    def _run(self, args: list[str]) -> None:
        cmd = ["runuser", "-u", self.user, "--", *args] if self.user else args
        subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)

    def start(self) -> PgServer:
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self.user = "postgres"
        self._run([_bin("initdb"), "-D", str(self.root / "data"), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                   "--no-locale"])
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=on"
        self._run([_bin("pg_ctl"), "-D", str(self.root / "data"), "-o", opts, "-l", str(self.root / "log"), "-w",
                   "start"])
        return self

    def create_db(self) -> str:
        import psycopg

        name = "b_" + uuid.uuid4().hex[:10]
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run([_bin("pg_ctl"), "-D", str(self.root / "data"), "-m", "fast", "-w", "stop"])
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
