"""A DIMSE-over-TLS PACS as a study source: ``[peers.X] tls = true`` with ``ca_file``, a clinic CA
trusted explicitly for that peer.

The PACS is a second real ``hilum serve`` on loopback whose DICOM port speaks TLS with a
certificate signed by a throw-away clinic CA (openssl).  The workstation's DIMSE source
(:class:`hilum.ui.dimse_source.PeerArchiveView`, C-FIND) finds its study and C-GET brings it into
the local archive pixel-equal; a peer whose CA is not trusted, or a plain association to the TLS
port, is refused; the study browser lists the study when the peer is chosen.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

import contextlib
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import tomli_w

from conftest import free_port, wait_port
from hilum.archive import Archive
from hilum.config import Config, Peer, load_config
from hilum.dicom.generator import MUELLER, generate_ct_series, make_study
from hilum.dimse.scu import peer_target, retrieve_study
from hilum.errors import HilumError
from hilum.ui.dimse_source import PeerArchiveView

APP = Path(__file__).resolve().parents[1] / "app"
TIMEOUT = 30_000


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def clinic_ca(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA (certificate, key)."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(cert),
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    return cert, key


def server_cert(folder: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by ``ca``."""
    key, csr, cert, ext = folder / "pacs.key", folder / "pacs.csr", folder / "pacs.crt", folder / "pacs.ext"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca[0]),
        "-CAkey",
        str(ca[1]),
        "-CAcreateserial",
        "-out",
        str(cert),
        "-days",
        "2",
        "-extfile",
        str(ext),
    )
    return cert, key


@contextlib.contextmanager
def tls_pacs(root: Path, cert: Path, key: Path, fill: Any) -> Iterator[int]:
    """``hilum serve`` whose DICOM port is TLS-only; yields that port."""
    root.mkdir(parents=True, exist_ok=True)
    with Archive(root) as a:
        fill(a)
    ports = {"dicom": free_port(), "web": free_port(), "hl7": free_port()}
    doc = {"node": {"aet": "TLSPACS", "tls_cert": str(cert), "tls_key": str(key)}}
    (root / "hilum.toml").write_text(tomli_w.dumps(doc))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(APP), os.environ.get("PYTHONPATH", "")])}
    log = open(root / "serve.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hilum",
            "serve",
            "--data",
            str(root),
            "--dicom-port",
            str(ports["dicom"]),
            "--web-port",
            str(ports["web"]),
            "--hl7-port",
            str(ports["hl7"]),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        for p in ports.values():
            try:
                wait_port(p, 60)
            except AssertionError:
                raise AssertionError(f"hilum serve did not start: {(root / 'serve.log').read_text()[-2000:]}") from None
        yield ports["dicom"]
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    pki = tmp_path_factory.mktemp("pki")
    ca = clinic_ca(pki, "clinic-ca")
    other_ca = clinic_ca(pki, "other-ca")
    cert, key = server_cert(pki, ca)
    info: dict[str, Any] = {"ca": ca[0], "other_ca": other_ca[0], "pixels": {}}

    def fill(archive: Archive) -> None:
        st = make_study(MUELLER, accession="TLS00001", date="20260708", seed="tls-pacs")
        for ds in generate_ct_series(st, rows=32, columns=32, slices=3, seed=21):
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            archive.ingest(buf.getvalue())
            info["pixels"][str(ds.SOPInstanceUID)] = ds.pixel_array.copy()
        info["study"] = st.uid

    with tls_pacs(tmp_path_factory.mktemp("pacs"), cert, key, fill) as port:
        info["port"] = port
        yield info


def _config(tmp_path: Path, pacs: dict[str, Any], **peer: Any) -> Config:
    spec = {"aet": "TLSPACS", "host": "127.0.0.1", "port": pacs["port"], "tls": True, "ca_file": str(pacs["ca"])}
    spec.update(peer)
    cfg = Config(data_dir=tmp_path / "ws", aet="WORKSTN", peers={"pacs": Peer(**spec)})
    cfg.save()
    return cfg


def test_tls_peer_find_and_get_with_the_clinic_ca(tmp_path: Path, pacs: dict[str, Any]) -> None:
    cfg = load_config(_config(tmp_path, pacs).data_dir)  # through hilum.toml
    peer = cfg.peers["pacs"]
    assert peer.tls and peer.ca_file == str(pacs["ca"])
    target = peer_target(cfg, peer, timeout=20)
    assert target.tls is not None
    rows = PeerArchiveView(target, "pacs").query("STUDY", {"PatientID": "HIL-0001"})
    assert [r["StudyInstanceUID"] for r in rows] == [pacs["study"]]
    with Archive(tmp_path / "local") as local:
        result = retrieve_study(local, target, pacs["study"])
        assert result.completed == 3
        got = local.instances(study_uid=pacs["study"])
        assert len(got) == 3
        for r in got:
            ds = pydicom.dcmread(r["path"])
            assert np.array_equal(ds.pixel_array, pacs["pixels"][str(ds.SOPInstanceUID)])


def test_tls_peer_refused_without_trust(tmp_path: Path, pacs: dict[str, Any]) -> None:
    # A CA that did not sign the PACS's certificate: the handshake fails, no rows, an error.
    cfg = _config(tmp_path, pacs, ca_file=str(pacs["other_ca"]))
    with pytest.raises((HilumError, OSError)) as refused:
        PeerArchiveView(peer_target(cfg, cfg.peers["pacs"], timeout=10), "pacs").query("STUDY", {})
    assert "certificate is not trusted" in str(refused.value), refused.value
    # Plain DICOM to the TLS port does not get an association either.
    cfg = _config(tmp_path, pacs, tls=False, ca_file="")
    with pytest.raises((HilumError, OSError)):
        PeerArchiveView(peer_target(cfg, cfg.peers["pacs"], timeout=10), "pacs").query("STUDY", {})
    assert "ca_file" not in (tmp_path / "ws" / "hilum.toml").read_text(), "an empty ca_file is not written"


class _NoNetwork:
    """A source that must not be asked (a cached study opens without it)."""

    name = "pacs"

    def fetch_into(self, *_a: Any, **_k: Any) -> None:
        raise AssertionError("the peer was asked for a cached study")

    def close(self) -> None:
        pass


def test_tls_peer_into_the_remote_cache(tmp_path: Path, pacs: dict[str, Any]) -> None:
    from hilum.dicomweb.cache import RemoteCache
    from hilum.ui.remote_source import _PeerFetch

    cfg = _config(tmp_path, pacs)
    source = _PeerFetch(peer_target(cfg, cfg.peers["pacs"], timeout=20), "pacs")
    with RemoteCache(tmp_path / "ws", 100) as cache:
        seen: list[int] = []
        archive = cache.open(source, pacs["study"], progress=lambda n, _r: seen.append(n))
        assert seen == [1, 2, 3] and cache.has(pacs["study"]) and cache.studies()[0]["source"] == "pacs"
        for r in archive.instances(study_uid=pacs["study"]):
            ds = pydicom.dcmread(r["path"])
            assert np.array_equal(ds.pixel_array, pacs["pixels"][str(ds.SOPInstanceUID)])
        cache.release(pacs["study"])
    with RemoteCache(tmp_path / "ws", 100) as cache:  # a restart: local, the peer not asked
        assert len(cache.open(_NoNetwork(), pacs["study"]).instances(study_uid=pacs["study"])) == 3
        cache.release(pacs["study"])


@pytest.mark.gui
def test_study_browser_lists_the_tls_peer(qtbot, make_main_window, tmp_path: Path, pacs: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    cfg = load_config(_config(tmp_path, pacs).data_dir)
    window = make_main_window(cfg, Archive(cfg.data_dir))
    ctl = window.remote_sources
    with qtbot.waitSignal(window.browser.searchFinished, timeout=TIMEOUT):
        ctl.select("dimse:pacs")
    assert window.browser.model.rowCount() == 1
    assert window.browser.model.row(0)["StudyInstanceUID"] == pacs["study"]

    # A TLS peer retrieved by C-GET opens into the remote cache, not the archive.
    assert ctl.peer_uses_cache("pacs")
    tabs = window.tabs.count()
    with qtbot.waitSignal(ctl.fetched, timeout=TIMEOUT):
        window.browser.openRequested.emit(pacs["study"])
    assert window.tabs.count() == tabs + 1
    viewer = window.tabs.widget(tabs)
    assert viewer.archive is ctl.cache.archive and ctl.cache.pinned(pacs["study"])
    assert window.archive.stats()["instances"] == 0
    assert window.close_workspace_tab(tabs)
    qtbot.waitUntil(lambda: not ctl.cache.pinned(pacs["study"]), timeout=TIMEOUT)
    with qtbot.waitSignal(ctl.fetched, timeout=TIMEOUT):
        window.browser.openRequested.emit(pacs["study"])
    assert "local cache" in window.statusBar().currentMessage()

    # Keep locally: from the cache into the archive through ingest.
    assert window.browser.select_study(pacs["study"])
    with qtbot.waitSignal(ctl.kept, timeout=TIMEOUT) as kept:
        ctl.keep_selected()
    assert kept.args == [pacs["study"], 3]
    assert window.archive.stats()["instances"] == 3
    window.close()


def test_open_into_setting(tmp_path: Path, pacs: dict[str, Any]) -> None:
    from hilum.errors import ConfigError

    cfg = _config(tmp_path, pacs, open_into="archive")
    assert load_config(cfg.data_dir).peers["pacs"].open_into == "archive"
    text = (cfg.data_dir / "hilum.toml").read_text().replace('"archive"', '"nowhere"')
    (cfg.data_dir / "hilum.toml").write_text(text)
    with pytest.raises(ConfigError):
        load_config(cfg.data_dir)
