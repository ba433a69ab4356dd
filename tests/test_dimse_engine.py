"""The fence around the fast DIMSE engine (issue 14 item 6): a setting that falls back to
pynetdicom's own classes, nothing patched at import, patches in place only while a fast node
runs, and an alarm when the pynetdicom code the fast engine mirrors changes.  Also: the worklist
and MPPS services are imported for real (issue 14 item 8)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelFind

from conftest import free_port
from hilum.config import Config
from hilum.errors import ConfigError
from hilum.node import Node

REPO = Path(__file__).resolve().parents[1]
ROOT = "1.2.826.0.1.3680043.10.999."

# A picture of pynetdicom's module and class namespaces (what a patch would change), printed as
# JSON by a fresh interpreter before and after something is imported or started.
SNAPSHOT = textwrap.dedent('''
    import importlib, inspect, json, pkgutil, sys
    import pynetdicom

    def modules():
        for info in pkgutil.walk_packages(pynetdicom.__path__, "pynetdicom."):
            if ".tests" in info.name or ".apps" in info.name or ".benchmarks" in info.name:
                continue
            importlib.import_module(info.name)
        return sorted(n for n in sys.modules if n == "pynetdicom" or n.startswith("pynetdicom."))

    def snapshot(names):
        out = {}
        for name in names:
            mod = sys.modules[name]
            for key, value in vars(mod).items():
                out[f"{name}.{key}"] = repr(value) if isinstance(value, (bool, int, float, str, type(None))) else id(value)
                if inspect.isclass(value) and value.__module__ == name:
                    for k, v in vars(value).items():
                        out[f"{name}.{key}.{k}"] = id(v)
        return out
''')


def _run(code: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", SNAPSHOT + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=REPO)


def test_importing_hilum_dimse_leaves_pynetdicom_untouched() -> None:
    proc = _run('''
        import pkgutil, importlib
        names = modules()
        before = snapshot(names)
        import hilum.dimse
        for info in pkgutil.walk_packages(hilum.dimse.__path__, "hilum.dimse."):
            importlib.import_module(info.name)
        after = snapshot(names)
        changed = sorted(k for k in before if after.get(k) != before[k]) + sorted(set(after) - set(before))
        print(json.dumps(changed))
    ''')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"importing hilum.dimse changed pynetdicom: {proc.stdout}"


def _tiny() -> Dataset:
    ds = Dataset()
    sop = generate_uid(ROOT)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(ROOT), generate_uid(ROOT)
    ds.PatientName, ds.PatientID, ds.StudyDate, ds.Modality = "Engine^Test", "ENGINE", "20240102", "OT"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(64)
    return ds


def _store_and_find(port: int) -> tuple[int, list[str]]:
    ae = AE("MODALITY")
    ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="HILUM")
    assert assoc.is_established
    try:
        stored = int(assoc.send_c_store(_tiny()).Status)
        query = Dataset()
        query.QueryRetrieveLevel, query.PatientID, query.PatientName = "PATIENT", "ENGINE", ""
        found = [str(ident.PatientName) for status, ident in
                 assoc.send_c_find(query, PatientRootQueryRetrieveInformationModelFind)
                 if status and status.Status == 0xFF00]
    finally:
        assoc.release()
        ae.shutdown()
    return stored, found


@pytest.mark.parametrize("engine", ["fast", "pynetdicom"])
def test_the_engine_setting_chooses_the_classes_and_the_patches(engine: str) -> None:
    """Each engine runs in a fresh interpreter; pynetdicom is as imported before start and after stop,
    and, with the pynetdicom engine, while the node runs too."""
    proc = _run(f'''
        import tempfile, pathlib
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification
        names = modules()
        before = snapshot(names)
        from hilum.config import Config
        from hilum.node import Node
        from hilum.dimse import reactor
        port = {free_port()}
        cfg = Config(data_dir=pathlib.Path(tempfile.mkdtemp()), dicom_port=port, extra={{"dimse": {{"engine": "{engine}"}}}})
        node = Node(cfg, only=["dimse"])
        node.start()
        running = snapshot(names)
        ae = AE("PROBE")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="HILUM")
        svc = node.service("dimse")
        [acceptor] = svc.ae.active_associations
        classes = [type(x).__name__ for x in (acceptor, acceptor.dul, acceptor.dimse, acceptor.dul.socket)]
        assoc.release()
        ae.shutdown()
        node.stop()
        after = snapshot(names)
        print(json.dumps({{"engine": svc.engine, "classes": classes,
                           "while_running": sorted(k for k in before if running.get(k) != before[k]),
                           "after_stop": sorted(k for k in before if after.get(k) != before[k]),
                           "encode_patched": running["pynetdicom.service_class.encode"] != before["pynetdicom.service_class.encode"]}}))
    ''', env={"HILUM_DIMSE_ENGINE": ""})
    assert proc.returncode == 0, proc.stderr
    import json

    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["engine"] == engine
    assert got["after_stop"] == []
    if engine == "pynetdicom":
        assert got["classes"] == ["Association", "DULServiceProvider", "DIMSEServiceProvider", "AssociationSocket"]
        assert got["while_running"] == []
    else:
        assert got["classes"] == ["EventDrivenAssociation", "EventDrivenDUL", "FastResponseDIMSE", "BulkSocket"]
        assert got["encode_patched"]
        assert set(got["while_running"]) <= {"pynetdicom.service_class.encode",
                                             "pynetdicom._config.LOG_REQUEST_IDENTIFIERS",
                                             "pynetdicom._config.LOG_RESPONSE_IDENTIFIERS"}


@pytest.mark.parametrize("engine", ["fast", "pynetdicom"])
def test_both_engines_store_and_find(tmp_path: Path, engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HILUM_DIMSE_ENGINE", engine)
    with Node(Config(data_dir=tmp_path / "data", dicom_port=free_port()), only=["dimse"]) as n:
        svc: Any = n.service("dimse")
        assert svc.engine == engine
        assert _store_and_find(svc.port) == (0x0000, ["Engine^Test"])
        assert svc.direct_stores == (1 if engine == "fast" else 0)
        assert [type(e).__name__ for e in svc.extensions] == ["WorklistSCP", "MppsSCP"]


# ------------------------------------------------------------------ the mirrored upstream code


def test_the_mirrored_pynetdicom_sources_are_the_pinned_ones() -> None:
    from hilum.dimse import reactor

    pin = re.search(r'"pynetdicom==([0-9.]+)"', (REPO / "pyproject.toml").read_text())
    assert pin is not None, "pynetdicom must be pinned exactly in pyproject.toml"
    assert pin.group(1) == reactor.PYNETDICOM_VERSION
    assert reactor.upstream_changes() == [], (
        "pynetdicom changed under the fast DIMSE engine: review hilum/dimse/reactor.py and storefast.py "
        "against the new sources, then update reactor.UPSTREAM")


def test_a_changed_upstream_function_is_noticed_and_the_node_falls_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from hilum.dimse import reactor

    name = "pynetdicom.dul.DULServiceProvider._read_pdu_data"
    monkeypatch.setitem(reactor.UPSTREAM, name, reactor.source_digest(name)[::-1])  # as if upstream edited it
    assert reactor.upstream_changes() == [name]
    monkeypatch.setenv("HILUM_DIMSE_ENGINE", "fast")
    with Node(Config(data_dir=tmp_path / "data", dicom_port=free_port()), only=["dimse"]) as n:
        svc: Any = n.service("dimse")
        assert svc.engine == "pynetdicom"
        assert not reactor.installed()
        assert _store_and_find(svc.port) == (0x0000, ["Engine^Test"])
    assert "running pynetdicom's own engine" in caplog.text


# ------------------------------------------------------------------ settings


def test_engine_settings_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hilum.dimse.settings import DimseSettings

    monkeypatch.delenv("HILUM_DIMSE_ENGINE", raising=False)
    cfg = Config(data_dir=tmp_path, extra={"dimse": {"engine": "pynetdicom", "artim_timeout": 2.5}})
    s = DimseSettings.from_config(cfg)
    assert (s.engine, s.artim_timeout, s.max_pending) == ("pynetdicom", 2.5, 32)
    monkeypatch.setenv("HILUM_DIMSE_ENGINE", "fast")
    assert DimseSettings.from_config(cfg).engine == "fast"  # the environment wins
    monkeypatch.setenv("HILUM_DIMSE_ENGINE", "turbo")
    with pytest.raises(ConfigError, match="HILUM_DIMSE_ENGINE"):
        DimseSettings.from_config(cfg)
    monkeypatch.delenv("HILUM_DIMSE_ENGINE")
    for bad in ({"engine": "turbo"}, {"artim_timeout": 0}, {"max_pending": 0}, {"max_pendings": 3}):
        with pytest.raises(ConfigError, match=r"\[dimse\]"):
            DimseSettings.from_config(Config(data_dir=tmp_path, extra={"dimse": bad}))
    with pytest.raises(ConfigError, match="max_pdu_size"):
        DimseSettings.from_config(Config(data_dir=tmp_path, max_pdu_size=1 << 30))


# ------------------------------------------------------------------ worklist and MPPS (issue 14 item 8)


def test_a_broken_worklist_module_stops_the_node_from_starting(tmp_path: Path) -> None:
    port = free_port()
    script = textwrap.dedent(f'''
        import runpy, sys
        from importlib.abc import MetaPathFinder

        class Broken(MetaPathFinder):  # as if mwl.py had a syntax error
            def find_spec(self, name, path, target=None):
                if name == "hilum.dimse.mwl":
                    raise SyntaxError("invalid syntax (mwl.py, line 1)")
                return None

        sys.meta_path.insert(0, Broken())
        sys.argv = ["hilum", "serve", "--data", {str(tmp_path / "data")!r}, "--dicom-port", "{port}",
                    "--web-port", "{free_port()}", "--hl7-port", "{free_port()}"]
        runpy.run_module("hilum", run_name="__main__")
    ''')
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break  # it serves: the broken worklist went unnoticed
            except OSError:
                time.sleep(0.1)
        assert proc.poll() is not None, "the node started without its worklist service"
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode != 0
    assert "mwl.py" in err, err
