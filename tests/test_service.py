"""``hilum serve`` as a service: the systemd unit installed into a temporary root and checked by systemd's
own tools, the graceful stop (SIGTERM while associations are in flight, a hung peer, a second signal,
SIGHUP), sd_notify readiness over a real datagram socket, and the Windows (WinSW) and macOS (launchd)
recipes parsed.

The unit is checked with ``systemd-analyze verify --root=ROOT``: systemd is not running here, so ROOT
holds the unit as ``install-service.sh --root`` installs it, a stub at its ExecStart path (verify checks
the command is executable) and a copy of the host's unit files (it needs ``sysinit.target`` & co.).
Unknown keys and bad values are only warnings to ``verify`` (exit 0), so :func:`_verify` fails on any
line it prints about the unit; the negative tests break the unit in several ways to prove that.
"""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import free_port
from hilum.archive import Archive

REPO = Path(__file__).resolve().parents[1]
LINUX = REPO / "installer" / "linux"
INSTALL = LINUX / "install-service.sh"
BIN = Path("/usr/bin")
ENV = {**os.environ, "TCP_NODELAY": "1"}
ANALYZE = shutil.which("systemd-analyze")
needs_systemd_tools = pytest.mark.skipif(
    ANALYZE is None or shutil.which("systemd-sysusers") is None,
    reason="systemd-analyze / systemd-sysusers are needed (Debian: systemd)",
)
N_FILES = 600  # 512x512: seconds of storescu on loopback, so that the stop surely begins mid-transfer
needs_dcmtk = pytest.mark.skipif(not (BIN / "storescu").exists(), reason="DCMTK is needed")


# ---------------------------------------------------------------- systemd unit, user, data folder


def _install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(INSTALL), "--root", str(root), *args], capture_output=True, text=True, timeout=120
    )


def _stub(root: Path, exe: str) -> None:
    """An executable at ``exe`` inside ``root`` (verify checks that ExecStart's command is executable)."""
    path = root / exe.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)


def _host_units(root: Path) -> None:
    """The host's unit files (dereferenced, without the .wants folders) as ROOT's /usr/lib/systemd/system."""
    dest = root / "usr/lib/systemd/system"
    dest.mkdir(parents=True, exist_ok=True)
    for src in Path("/usr/lib/systemd/system").iterdir():
        if src.is_file():
            shutil.copyfile(src, dest / src.name)


def _verify(root: Path) -> list[str]:
    """Problems ``systemd-analyze verify`` finds in ROOT's hilum.service: its exit status and every
    line it prints (a clean unit prints nothing)."""
    assert ANALYZE is not None
    out = subprocess.run(
        [ANALYZE, "verify", f"--root={root}", "--man=no", "/etc/systemd/system/hilum.service"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    problems = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    if out.returncode != 0:
        problems.append(f"exit status {out.returncode}")
    return problems


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """A temporary root with the service installed as on a Debian server with the .deb (/opt/hilum)."""
    root = tmp_path / "root"
    result = _install(root)
    assert result.returncode == 0, result.stderr
    _stub(root, "/opt/hilum/hilum")
    _host_units(root)
    return root


def _unit(root: Path) -> dict[str, list[str]]:
    """hilum.service's ``Key=value`` lines by key (a key may repeat), comments dropped."""
    out: dict[str, list[str]] = {}
    for line in (root / "etc/systemd/system/hilum.service").read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@needs_systemd_tools
def test_install_service_into_a_root_makes_unit_user_and_data_folder(installed: Path) -> None:
    root = installed
    unit = _unit(root)
    assert unit["ExecStart"] == ["/opt/hilum/hilum serve --data /var/lib/hilum"]
    assert unit["User"] == ["hilum"] and unit["Group"] == ["hilum"] and unit["StateDirectory"] == ["hilum"]
    assert unit["Type"] == ["notify"] and unit["KillSignal"] == ["SIGTERM"] and unit["Restart"] == ["on-failure"]
    assert unit["CapabilityBoundingSet"] == [""] and unit["ReadWritePaths"] == ["/var/lib/hilum"]
    # The stop timeout leaves the node's own bound ([node] stop_timeout, default 30 s) and the other
    # services' stops room before systemd's SIGKILL.
    from hilum.config import Config

    assert int(unit["TimeoutStopSec"][0].rstrip("s")) >= Config(data_dir=root).stop_timeout + 30
    user = [line.split(":") for line in (root / "etc/passwd").read_text().splitlines() if line.startswith("hilum:")]
    assert len(user) == 1
    _name, _pw, uid, gid, _gecos, home, shell = user[0]
    assert int(uid) < 1000, "a system user"
    assert home == "/var/lib/hilum" and shell in ("/usr/sbin/nologin", "/sbin/nologin")
    assert any(line.startswith(f"hilum:x:{gid}:") for line in (root / "etc/group").read_text().splitlines())
    for folder in (root / "var/lib/hilum", root / "var/lib/hilum/logs"):
        st = folder.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (int(uid), int(gid), 0o750), folder
    assert (root / "usr/lib/sysusers.d/hilum.conf").exists() and (root / "usr/lib/tmpfiles.d/hilum.conf").exists()
    assert _verify(root) == []
    # A second run (an upgrade) changes nothing and makes no second user.
    again = _install(root)
    assert again.returncode == 0, again.stderr
    assert sum(line.startswith("hilum:") for line in (root / "etc/passwd").read_text().splitlines()) == 1
    assert _verify(root) == []


@needs_systemd_tools
def test_unit_security_exposure_is_low(installed: Path) -> None:
    """``systemd-analyze security --offline`` scores the unit's sandbox (0 best, 10 worst; "OK" < 4.6)."""
    assert ANALYZE is not None
    out = subprocess.run(
        [
            ANALYZE,
            "security",
            "--offline=true",
            f"--root={installed}",
            "--no-pager",
            "/etc/systemd/system/hilum.service",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    match = re.search(r"Overall exposure level for hilum\.service: (\d+\.\d+)", out.stdout)
    assert match, out.stdout[-2000:] + out.stderr[-2000:]
    print(f"systemd-analyze security exposure: {match.group(1)}")
    assert float(match.group(1)) <= 2.5, out.stdout


@needs_systemd_tools
def test_venv_install_and_another_data_folder(tmp_path: Path) -> None:
    root = tmp_path / "root"
    result = _install(root, "--exec", "/opt/hilum-venv/bin/hilum", "--data", "/srv/hilum")
    assert result.returncode == 0, result.stderr
    _stub(root, "/opt/hilum-venv/bin/hilum")
    _host_units(root)
    unit = _unit(root)
    assert unit["ExecStart"] == ["/opt/hilum-venv/bin/hilum serve --data /srv/hilum"]
    assert unit["ReadWritePaths"] == ["/srv/hilum"] and unit["WorkingDirectory"] == ["/srv/hilum"]
    assert (root / "srv/hilum/logs").is_dir()
    assert _verify(root) == []


@pytest.mark.skipif(shutil.which("useradd") is None or os.geteuid() != 0, reason="useradd --root needs root")
def test_install_service_without_systemd_tools_falls_back_to_useradd(tmp_path: Path) -> None:
    """A machine without systemd-sysusers/-tmpfiles (a minimal container image being built): useradd makes
    the system user and install -d the data folder, with the same result."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in (
        "bash",
        "sed",
        "install",
        "grep",
        "useradd",
        "awk",
        "mkdir",
        "chmod",
        "mv",
        "id",
        "cat",
        "dirname",
        "getent",
    ):
        found = shutil.which(name)
        assert found, name
        (tools / name).symlink_to(found)
    root = tmp_path / "root"
    out = subprocess.run(
        ["bash", str(INSTALL), "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": str(tools)},
    )
    assert out.returncode == 0, out.stderr
    user = next(line.split(":") for line in (root / "etc/passwd").read_text().splitlines() if line.startswith("hilum:"))
    assert int(user[2]) < 1000 and user[5:] == ["/var/lib/hilum", "/usr/sbin/nologin"]
    st = (root / "var/lib/hilum/logs").stat()
    assert (st.st_uid, st.st_mode & 0o777) == (int(user[2]), 0o750)
    assert (
        "ExecStart=/opt/hilum/hilum serve --data /var/lib/hilum"
        in (root / "etc/systemd/system/hilum.service").read_text()
    )


@pytest.mark.parametrize("args", [["--exec", "relative/hilum"], ["--data", "var/lib/hilum"], ["--frobnicate"]])
def test_install_service_refuses_bad_options(tmp_path: Path, args: list[str]) -> None:
    result = _install(tmp_path / "root", *args)
    assert result.returncode == 2 and "install-service.sh:" in result.stderr, result.stderr
    assert not (tmp_path / "root/etc/systemd/system/hilum.service").exists()


@needs_systemd_tools
@pytest.mark.parametrize(
    ("pattern", "replacement", "expected"),
    [
        (r"^ProtectSystem=strict$", "ProtectSystem=strict\nProtectSystm=full", "Unknown key"),
        (r"^ProtectSystem=strict$", "ProtectSystem=sometimes", "protect system value"),
        (r"^Type=notify$", "Type=notifyy", "service type"),
        (r"^ExecStart=/opt/hilum/hilum", "ExecStart=/opt/nothere/hilum", "not executable"),
        (r"^\[Service\]$", "[Servic]", "Unknown section"),
        (r"^KillSignal=SIGTERM$", "KillSignal=SIGTERMINATE", "signal name"),
    ],
)
def test_a_broken_unit_is_caught(installed: Path, pattern: str, replacement: str, expected: str) -> None:
    """The check is not blind: each of these breakages of the installed unit is reported."""
    path = installed / "etc/systemd/system/hilum.service"
    text, n = re.subn(pattern, replacement, path.read_text(), count=1, flags=re.M)
    assert n == 1
    path.write_text(text)
    problems = _verify(installed)
    assert problems and any(expected.lower() in p.lower() for p in problems), problems


@needs_systemd_tools
def test_sysusers_and_tmpfiles_syntax(tmp_path: Path) -> None:
    """systemd's own parsers read both files: a dry run creates the user, tmpfiles the folders; a
    broken line is refused."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name in ("passwd", "group"):
        (root / "etc" / name).write_text("")
    dry = subprocess.run(
        ["systemd-sysusers", f"--root={root}", "--dry-run", str(LINUX / "hilum.sysusers.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = dry.stdout + dry.stderr
    assert dry.returncode == 0 and "Creating user 'hilum' (Hilum DICOM node)" in said, said
    assert "Would write /etc/passwd" in said and (root / "etc/passwd").read_text() == "", said
    bad = tmp_path / "bad.conf"
    bad.write_text((LINUX / "hilum.sysusers.conf").read_text().replace("u     hilum", "x     hilum"))
    broken = subprocess.run(
        ["systemd-sysusers", f"--root={root}", "--dry-run", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert broken.returncode != 0 and "Unknown command type" in broken.stderr, broken.stderr
    (root / "etc/passwd").write_text("hilum:x:990:990::/var/lib/hilum:/usr/sbin/nologin\n")
    (root / "etc/group").write_text("hilum:x:990:\n")
    made = subprocess.run(
        ["systemd-tmpfiles", "--create", f"--root={root}", str(LINUX / "hilum.tmpfiles.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0 and not made.stderr.strip(), made.stderr
    st = (root / "var/lib/hilum/logs").stat()
    assert (st.st_uid, st.st_mode & 0o777) == (990, 0o750)


def test_port_104_drop_in_grants_only_that_capability() -> None:
    lines = [line for line in (LINUX / "port-104.conf").read_text().splitlines() if line and line[0] != "#"]
    assert lines == [
        "[Service]",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
    ]


# ---------------------------------------------------------------- graceful stop of a real `hilum serve`


class Serve:
    """``hilum serve`` in a subprocess, its stderr collected line by line (with arrival times)."""

    def __init__(self, data: Path, port: int, env: dict[str, str] | None = None):
        self.data, self.port = data, port
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hilum",
                "serve",
                "--data",
                str(data),
                "--aet",
                "NODE",
                "--dicom-port",
                str(port),
                "--web-port",
                str(free_port()),
                "--hl7-port",
                str(free_port()),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env or ENV,
        )
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    @property
    def log(self) -> str:
        return "\n".join(line for _t, line in self.lines)

    def wait_for(self, text: str, timeout: float = 60) -> float:
        """When a line containing ``text`` arrived (monotonic time)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, line in list(self.lines):
                if text in line:
                    return t
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no line with {text!r} in hilum serve's log:\n{self.log[-3000:]}")

    def wait_listening(self) -> None:
        self.wait_for("node NODE started", timeout=90)

    def finish(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(10)
        return code


@pytest.fixture
def serve_factory() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def _start(
    started: list[Serve], data: Path, stop_timeout: float | None = None, env: dict[str, str] | None = None
) -> Serve:
    data.mkdir(parents=True, exist_ok=True)
    if stop_timeout is not None:
        (data / "hilum.toml").write_text(f"[node]\nstop_timeout = {stop_timeout}\n")
    s = Serve(data, free_port(), env)
    started.append(s)
    s.wait_listening()
    return s


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def _storage_ae(ae_title: str = "SLOW") -> object:
    from pynetdicom import AE
    from pynetdicom.sop_class import SecondaryCaptureImageStorage, Verification

    ae = AE(ae_title=ae_title)
    ae.add_requested_context(SecondaryCaptureImageStorage)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
    return ae


def _datasets(n: int, name: str, size: int = 8) -> list:  # type: ignore[type-arg]
    from pydicom.uid import generate_uid

    from test_dimse_scp import ROOT, _tiny

    out = _tiny(f"Svc^{name}", name, "20240101", generate_uid(ROOT), generate_uid(ROOT), "OT", n)
    if size != 8:
        for ds in out:
            ds.Rows = ds.Columns = size
            ds.PixelData = os.urandom(size * size)
    return out


@needs_dcmtk
def test_sigterm_mid_transfer_finishes_associations_in_flight_and_refuses_new_ones(
    tmp_path: Path, serve_factory: list[Serve]
) -> None:
    """storescu sends 600 files; a second association (this test, pynetdicom) is open too.  SIGTERM
    while both are in flight: the listener closes at once (a new connection is refused, echoscu fails),
    storescu's association completes (exit 0), the open association goes on storing after the signal,
    and the node exits 0 once both are released; after a restart every acknowledged instance is there."""
    files = []
    for i, ds in enumerate(_datasets(N_FILES, "STORESCU", size=512)):
        files.append(tmp_path / f"{i:03d}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    held = _datasets(6, "HELD")
    data = tmp_path / "data"
    node = _start(serve_factory, data, stop_timeout=120)
    assoc = _storage_ae().associate("127.0.0.1", node.port, ae_title="NODE")  # type: ignore[attr-defined]
    assert assoc.is_established
    assert assoc.send_c_store(held[0]).Status == 0
    sender = subprocess.Popen(
        [str(BIN / "storescu"), "-aet", "CT1", "-aec", "NODE", "127.0.0.1", str(node.port), *map(str, files)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # SIGTERM as soon as storescu's first C-STORE is in (the held association stored one blob before).
        deadline = time.monotonic() + 60
        while sum(1 for p in (data / "blobs").rglob("*.dcm")) < 2:
            assert time.monotonic() < deadline and sender.poll() is None, "storescu's C-STOREs did not arrive"
            time.sleep(0.01)
        t_signal = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)
        node.wait_for("DICOM listener closed", timeout=30)
        assert _refused(node.port), "a new connection was accepted after SIGTERM"
        echo = subprocess.run(
            [str(BIN / "echoscu"), "-aec", "NODE", "127.0.0.1", str(node.port)],
            capture_output=True,
            text=True,
            timeout=60,
            env=ENV,
        )
        assert echo.returncode != 0
        assert sender.wait(120) == 0, sender.stderr.read() if sender.stderr else ""
        # The association opened before the signal is still served after it.
        for ds in held[1:]:
            assert assoc.send_c_store(ds).Status == 0
        assoc.release()
        code = node.finish(timeout=120)
        t_exit = time.monotonic()
    finally:
        if sender.poll() is None:
            sender.kill()
        if assoc.is_alive():
            assoc.abort()
    assert code == 0, node.log[-3000:]
    print(
        f"graceful stop: SIGTERM -> exit {t_exit - t_signal:.2f} s with storescu ({N_FILES} files of 512x512) and a held association"
    )
    assert f"C-STORE {N_FILES}" in node.log and "CT1 -> NODE" in node.log, node.log[-3000:]
    # Both associations really were in flight when the stop began: their summary lines come after it.
    lines = [line for _t, line in node.lines]
    closed = next(i for i, line in enumerate(lines) if "DICOM listener closed" in line)
    assert "2 association(s) in flight" in lines[closed], lines[closed]
    for who in ("CT1 -> NODE", "SLOW -> NODE"):
        done = next(i for i, line in enumerate(lines) if who in line and "released" in line)
        assert done > closed, (who, lines[closed:])
    assert "aborting" not in node.log, node.log[-3000:]
    # Restart: every acknowledged instance is in the index.
    again = _start(serve_factory, data)
    again.proc.send_signal(signal.SIGTERM)
    assert again.finish(timeout=120) == 0
    with Archive(data) as a:
        assert a.stats()["instances"] == N_FILES + 6
        stored = {row["SOPInstanceUID"] for row in a.query("IMAGE", {})}
    assert {str(ds.SOPInstanceUID) for ds in held} <= stored


def test_a_hung_peer_does_not_hold_the_stop_beyond_stop_timeout(tmp_path: Path, serve_factory: list[Serve]) -> None:
    """An association that sends nothing: SIGTERM, and after ``[node] stop_timeout`` (2 s here) it is
    aborted and the node exits 0 anyway."""
    node = _start(serve_factory, tmp_path / "data", stop_timeout=2)
    assoc = _storage_ae("HUNG").associate("127.0.0.1", node.port, ae_title="NODE")  # type: ignore[attr-defined]
    assert assoc.is_established
    try:
        t_signal = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)
        t_closed = node.wait_for("DICOM listener closed", timeout=30)
        code = node.finish(timeout=60)
        t_exit = time.monotonic()
    finally:
        if assoc.is_alive():
            assoc.abort()
    assert code == 0, node.log[-3000:]
    assert "aborting 1 association(s) still open" in node.log and "HUNG -> NODE" in node.log, node.log[-3000:]
    t_abort = node.wait_for("aborting 1 association")
    print(
        f"hung peer, stop_timeout 2 s: listener closed {t_closed - t_signal:.2f} s after SIGTERM, "
        f"abort {t_abort - t_signal:.2f} s, exit {t_exit - t_signal:.2f} s"
    )
    assert t_abort - t_closed >= 1.5, "the association was not given its stop_timeout"
    deadline = time.monotonic() + 10
    while assoc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assoc.is_aborted or not assoc.is_established


def test_a_second_signal_aborts_what_is_in_flight_at_once(tmp_path: Path, serve_factory: list[Serve]) -> None:
    """stop_timeout 600 s and a hung association: the first SIGINT starts the stop, the second ends the wait."""
    node = _start(serve_factory, tmp_path / "data", stop_timeout=600)
    assoc = _storage_ae("HUNG").associate("127.0.0.1", node.port, ae_title="NODE")  # type: ignore[attr-defined]
    assert assoc.is_established
    try:
        node.proc.send_signal(signal.SIGINT)
        node.wait_for("DICOM listener closed", timeout=30)
        time.sleep(0.5)
        assert node.proc.poll() is None, "the node did not wait for the association in flight"
        t_second = time.monotonic()
        node.proc.send_signal(signal.SIGINT)
        code = node.finish(timeout=90)  # far below the 600 s it would otherwise wait
        print(f"second signal -> exit {time.monotonic() - t_second:.2f} s")
    finally:
        if assoc.is_alive():
            assoc.abort()
    assert code == 0, node.log[-3000:]
    assert "again: aborting what is still in flight" in node.log and "aborting 1 association" in node.log


def test_sighup_stops_cleanly_like_sigterm(tmp_path: Path, serve_factory: list[Serve]) -> None:
    node = _start(serve_factory, tmp_path / "data")
    node.proc.send_signal(signal.SIGHUP)
    assert node.finish(timeout=90) == 0, node.log[-3000:]
    assert f"signal {int(signal.SIGHUP)}: stopping" in node.log


@pytest.mark.parametrize("value", ["-1", "7200", '"soon"', "true"])
def test_a_bad_stop_timeout_is_a_config_error(tmp_path: Path, value: str) -> None:
    (tmp_path / "hilum.toml").write_text(f"[node]\nstop_timeout = {value}\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "hilum",
            "serve",
            "--data",
            str(tmp_path),
            "--dicom-port",
            str(free_port()),
            "--web-port",
            str(free_port()),
            "--hl7-port",
            str(free_port()),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1 and "[node] stop_timeout" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_stop_timeout_survives_a_config_save(tmp_path: Path) -> None:
    """The workstation rewrites hilum.toml (Config.save, e.g. when a DICOMweb source is added): the
    setting is kept."""
    from hilum.config import Config, load_config

    Config(data_dir=tmp_path, stop_timeout=75).save()
    assert load_config(tmp_path).stop_timeout == 75


# ---------------------------------------------------------------- sd_notify (Type=notify)


def _notify_socket(path: Path | str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(90)
    return sock


def test_serve_notifies_ready_and_stopping_over_notify_socket(tmp_path: Path, serve_factory: list[Serve]) -> None:
    """Under Type=notify: READY=1 arrives once the DICOM port accepts; STOPPING=1 when the stop begins."""
    path = tmp_path / "notify.sock"
    with _notify_socket(path) as sock:
        data = tmp_path / "data"
        data.mkdir()
        node = Serve(data, free_port(), {**ENV, "NOTIFY_SOCKET": str(path)})
        serve_factory.append(node)
        ready = sock.recv(4096).decode().split("\n")
        assert "READY=1" in ready and f"MAINPID={node.proc.pid}" in ready, ready
        assert any(f.startswith("STATUS=node NODE listening: dimse") for f in ready), ready
        assert not _refused(node.port), "READY=1 before the DICOM port accepted connections"
        node.proc.send_signal(signal.SIGTERM)
        stopping = sock.recv(4096).decode().split("\n")
        assert "STOPPING=1" in stopping, stopping
        assert node.finish(timeout=90) == 0, node.log[-3000:]


def test_notify_abstract_socket_and_no_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    from hilum.sdnotify import notify

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    name = f"hilum-test-{os.getpid()}-{time.monotonic_ns()}"
    with _notify_socket("\0" + name) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("READY=1", "STATUS=x") is True
        assert sock.recv(100) == b"READY=1\nSTATUS=x"
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)  # nobody listens any more: False, no exception
    assert notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert notify("READY=1") is False


# ---------------------------------------------------------------- Windows service (WinSW) and launchd


def test_winsw_xml_wraps_hilum_serve_and_stops_it_with_ctrl_c() -> None:
    path = REPO / "installer" / "windows" / "hilum-service.xml"
    service = ET.parse(path).getroot()
    assert service.tag == "service"
    text = {child.tag: (child.text or "").strip() for child in service}
    assert text["id"] == "hilum" and text["executable"].lower().endswith("hilum.exe")
    assert text["arguments"].startswith("serve --data ")
    # WinSW stops a console program with Ctrl+C (SIGINT for Python, which `hilum serve` handles) and
    # kills it only after stoptimeout: longer than the node's own stop bound.
    from hilum.config import Config

    seconds = int(re.fullmatch(r"(\d+) ?sec", text["stoptimeout"]).group(1))  # type: ignore[union-attr]
    assert seconds >= Config(data_dir=Path(".")).stop_timeout + 30
    assert service.find("onfailure") is not None and service.find("onfailure").get("action") == "restart"  # type: ignore[union-attr]
    assert service.find("log") is not None
    assert (REPO / "installer" / "windows" / "SERVICE.md").exists()


def test_launchd_plist_runs_hilum_serve_with_keepalive_on_crash() -> None:
    with open(REPO / "installer" / "macos" / "org.hilum.serve.plist", "rb") as f:
        plist = plistlib.load(f)
    assert plist["Label"] == "org.hilum.serve"
    args = plist["ProgramArguments"]
    assert Path(args[0]).name == "hilum" and args[1:3] == ["serve", "--data"]
    assert plist["KeepAlive"] == {"SuccessfulExit": False}  # restarted after a crash, not after a clean stop
    from hilum.config import Config

    assert plist["ExitTimeOut"] >= Config(data_dir=Path(".")).stop_timeout + 30
    assert plist["UserName"] == "_hilum" and plist["StandardErrorPath"].endswith(".log")
    assert plist["RunAtLoad"] is True
