"""C-FIND and Modality Worklist answers on the fast engine's direct path (issue 24 item 5).

The fast engine writes pending C-FIND responses itself, many per write
(:class:`hilum.dimse.reactor.FindResponder`), and encodes worklist responses
without pydicom (:class:`hilum.dimse.mwl.WorklistPlan`).  Held equal here to:

- the same queries answered by pynetdicom's own engine (every response, in order,
  also when the peer's maximum PDU length splits the identifiers);
- the same queries answered by a real Orthanc on the same data (study and image
  level, and Orthanc's worklist plugin for MWL): the requested keys of every match;
- ``response_for`` (the pydicom data set) for every worklist row, both VR encodings.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from datetime import date, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE
from pynetdicom.dsutils import decode
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from conftest import free_port, orthanc_process
from hilum.archive import Archive
from hilum.archive.orders import OrderBook, OrderInfo, PatientInfo, StepInfo
from hilum.config import Config
from hilum.dimse.mwl import MODALITY_WORKLIST_FIND, WorklistPlan, keys_of, response_for
from hilum.dimse.reactor import pack_pdvs
from hilum.dimse.scp import DimseService

ROOT = "1.2.826.0.1.3680043.10.1234.77."
N_STUDIES = 30
MANY = 75  # instances of one series: more than two batches of FindResponder
TODAY = date.today().strftime("%Y%m%d")
WEEK_END = (date.today() + timedelta(days=6)).strftime("%Y%m%d")
HAS_ORTHANC = shutil.which("Orthanc") is not None
WORKLIST_PLUGIN = "/usr/share/orthanc/plugins/libModalityWorklists.so"


def _instance(i: int, study: str, series: str, sop: str, name: str, pid: str, number: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID = name, pid
    ds.StudyDate, ds.StudyTime = f"20{10 + i % 12:02d}{1 + i % 12:02d}{1 + i % 28:02d}", f"{8 + i % 10:02d}3000"
    ds.AccessionNumber, ds.StudyID, ds.Modality = f"ACC{i:05d}", str(i), ("CT", "MR", "US")[i % 3]
    ds.StudyDescription = f"Study {i}"
    ds.SeriesNumber, ds.InstanceNumber, ds.ConversionType = 1, number, "WSD"
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = bytes(16)
    return ds


@pytest.fixture(scope="module")
def image_set(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """N_STUDIES single-instance studies (names with wildcards to match, a UTF-8 one) and one
    study of MANY instances."""
    folder = tmp_path_factory.mktemp("findset")
    datasets = []
    for i in range(N_STUDIES):
        k = i % 25  # patients 0-4 have two studies each, under the same name
        name = "Müller^Jürgen" if k == 7 else f"{'ABC'[k % 3]}{k:02d}^Test"
        datasets.append(_instance(i, f"{ROOT}{i}.1", f"{ROOT}{i}.2", f"{ROOT}{i}.3", name, f"P{k:03d}", 1))
    for j in range(MANY):
        datasets.append(
            _instance(99, f"{ROOT}99.1", f"{ROOT}99.2", f"{ROOT}99.3.{j + 1}", "Many^Images", "PMANY", j + 1)
        )
    paths = []
    for k, ds in enumerate(datasets):
        paths.append(folder / f"f{k:04d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


STUDY_KEYS = ("StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "AccessionNumber", "StudyDescription")
IMAGE_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "InstanceNumber")
QUERIES: list[tuple[str, dict[str, str]]] = [
    ("STUDY", {"PatientName": "A*"}),
    ("STUDY", {"PatientName": "Müller*"}),
    ("STUDY", {"PatientID": "P003"}),
    ("STUDY", {"StudyDate": "20100101-20151231"}),
    ("STUDY", {"AccessionNumber": "ACC00099"}),
    ("STUDY", {}),
    ("IMAGE", {"StudyInstanceUID": f"{ROOT}99.1"}),
    ("IMAGE", {"StudyInstanceUID": f"{ROOT}4.1"}),
    ("IMAGE", {"SOPInstanceUID": f"{ROOT}99.3.40"}),
]


def _identifier(level: str, keys: dict[str, str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k in STUDY_KEYS if level == "STUDY" else IMAGE_KEYS:
        setattr(ds, k, "")
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def _find(port: int, aet: str, queries: list[Dataset], model: str, max_pdu: int = 0) -> list[list[Dataset]]:
    """Every pending identifier of each query, in order, over one pynetdicom association."""
    ae = AE(ae_title="FINDSCU")
    ae.add_requested_context(model)
    ae.maximum_pdu_size = max_pdu
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, ae_title=aet)
    assert assoc.is_established
    out = []
    try:
        for q in queries:
            got = []
            for status, ident in assoc.send_c_find(q, model):
                assert status and "Status" in status, "no response"
                if status.Status in (0xFF00, 0xFF01):
                    got.append(ident)
                else:
                    assert status.Status == 0x0000, hex(status.Status)
            out.append(got)
    finally:
        assoc.release()
    return out


def _keys(rows: list[Dataset], keys: tuple[str, ...]) -> list[tuple[str, ...]]:
    return sorted(tuple(str(r.get(k, "") or "") for k in keys) for r in rows)


@pytest.fixture(scope="module")
def hilum_engines(tmp_path_factory: pytest.TempPathFactory, image_set: list[Path]) -> Iterator[dict[str, int]]:
    """The image set served by two nodes on one archive folder each: the fast engine and pynetdicom's."""
    mp = pytest.MonkeyPatch()
    ports: dict[str, int] = {}
    services = []
    try:
        for engine in ("fast", "pynetdicom"):
            mp.setenv("HILUM_DIMSE_ENGINE", engine)
            archive = Archive(tmp_path_factory.mktemp(f"hilum-{engine}"))
            assert all(r.ok for r in archive.ingest_many(image_set, origin="import"))
            svc = DimseService(Config(data_dir=archive.data_dir, aet="HILUM", dicom_port=free_port()), archive)
            svc.start()
            assert svc.engine == engine
            services.append((svc, archive))
            ports[engine] = svc.port
        mp.undo()
        yield ports
    finally:
        mp.undo()
        for svc, archive in services:
            svc.stop()
            archive.close()


@pytest.mark.parametrize("max_pdu", [0, 120])  # 120: every identifier split over several PDUs
def test_fast_find_answers_equal_pynetdicom_engine(hilum_engines: dict[str, int], max_pdu: int) -> None:
    idents = [_identifier(level, keys) for level, keys in QUERIES]
    model = StudyRootQueryRetrieveInformationModelFind
    fast = _find(hilum_engines["fast"], "HILUM", idents, model, max_pdu)
    slow = _find(hilum_engines["pynetdicom"], "HILUM", idents, model, max_pdu)
    assert [len(a) for a in fast] == [len(a) for a in slow]
    assert len(fast[QUERIES.index(("IMAGE", {"StudyInstanceUID": f"{ROOT}99.1"}))]) == MANY
    for a, b in zip(fast, slow, strict=True):
        assert a == b  # the same identifiers in the same order


def _orthanc_config(root: Path, **extra: Any) -> dict[str, Any]:
    return {
        "Name": "FindTest",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "index"),
        "DicomAet": "ORTHANC",
        "DicomPort": free_port(),
        "HttpPort": free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowFind": True,
        "DicomCheckCalledAet": False,
        "Plugins": [],
        **extra,
    }


@pytest.mark.skipif(not HAS_ORTHANC, reason="Orthanc is not installed")
def test_find_answers_equal_orthanc(tmp_path: Path, hilum_engines: dict[str, int], image_set: list[Path]) -> None:
    cfg = _orthanc_config(tmp_path)
    http = f"http://127.0.0.1:{cfg['HttpPort']}"

    def ready() -> bool:
        with urllib.request.urlopen(f"{http}/system", timeout=2):
            return True

    with orthanc_process(tmp_path, cfg, ready):
        for p in image_set:
            req = urllib.request.Request(
                f"{http}/instances", data=p.read_bytes(), headers={"Content-Type": "application/dicom"}
            )
            with urllib.request.urlopen(req, timeout=30) as r:
                assert json.loads(r.read())["Status"] in ("Success", "AlreadyStored")
        idents = [_identifier(level, keys) for level, keys in QUERIES]
        model = StudyRootQueryRetrieveInformationModelFind
        theirs = _find(int(cfg["DicomPort"]), "ORTHANC", idents, model)
    ours = _find(hilum_engines["fast"], "HILUM", idents, model)
    for (level, keys), a, b in zip(QUERIES, ours, theirs, strict=True):
        wanted = STUDY_KEYS if level == "STUDY" else IMAGE_KEYS
        assert _keys(a, wanted) == _keys(b, wanted), (level, keys)
    assert sum(len(a) for a in ours) > MANY + N_STUDIES


# ---------------------------------------------------------------- Modality Worklist

ORDERS = 80  # 40 today (two stations), 40 in the days after; one with a code, UTF-8 names


def _order_specs() -> list[dict[str, Any]]:
    out = []
    for i in range(ORDERS):
        day = date.today() + timedelta(days=0 if i < 40 else 1 + i % 5)
        out.append(
            {
                "pid": f"W{i:04d}",
                "name": "Müller^Zoë" if i % 9 == 0 else f"SMITH^Pat{i}",
                "acc": f"WL{i:05d}",
                "uid": f"{ROOT}500.{i}",
                "station": ("CT1", "MR1")[i % 2],
                "modality": ("CT", "MR")[i % 2],
                "date": day.strftime("%Y%m%d"),
                "time": f"{8 + i % 10:02d}{i % 60:02d}00",
                "desc": f"Procedure {i % 7}",
                "code": ("P1", "Chest CT") if i == 3 else None,
            }
        )
    return out


def _fill_orders(archive: Archive) -> None:
    book = OrderBook(archive)
    with book.transaction() as tx:
        for s in _order_specs():
            p = tx.upsert_patient(PatientInfo(s["pid"], name=s["name"], birth_date="19700101", sex="F"))
            code = s["code"] or ("", "")
            tx.create_order(
                p,
                OrderInfo(
                    accession_number=s["acc"],
                    study_uid=s["uid"],
                    description=s["desc"],
                    code_value=code[0],
                    code_scheme="L" if code[0] else "",
                    code_meaning=code[1],
                    steps=[
                        StepInfo(
                            modality=s["modality"],
                            station_aet=s["station"],
                            start_date=s["date"],
                            start_time=s["time"],
                            description=s["desc"],
                        )
                    ],
                ),
            )


def _wl_identifier(**sps: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    for k in ("PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID", "RequestedProcedureID"):
        setattr(ds, k, "")
    item = Dataset()
    for k in (
        "ScheduledStationAETitle",
        "Modality",
        "ScheduledProcedureStepStartDate",
        "ScheduledProcedureStepStartTime",
        "ScheduledProcedureStepID",
    ):
        setattr(item, k, sps.get(k, ""))
    ds.ScheduledProcedureStepSequence = [item]
    return ds


def _wl_queries() -> list[Dataset]:
    by_name = _wl_identifier()
    by_name.PatientName = "Müller*"
    return [
        _wl_identifier(ScheduledProcedureStepStartDate=TODAY),  # 40 matches: past one batch
        _wl_identifier(Modality="MR", ScheduledProcedureStepStartDate=f"{TODAY}-{WEEK_END}"),
        _wl_identifier(ScheduledStationAETitle="CT1", ScheduledProcedureStepStartDate=TODAY),
        by_name,
    ]


def _wl_keys(rows: list[Dataset]) -> list[tuple[str, ...]]:
    out = []
    for r in rows:
        sps = r.ScheduledProcedureStepSequence[0]
        out.append(
            tuple(str(r.get(k, "") or "") for k in ("PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID"))
            + tuple(
                str(sps.get(k, "") or "")
                for k in (
                    "ScheduledStationAETitle",
                    "Modality",
                    "ScheduledProcedureStepStartDate",
                    "ScheduledProcedureStepStartTime",
                )
            )
        )
    return sorted(out)


def _encoded(ds: Dataset, implicit: bool) -> Dataset:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, implicit
    write_dataset(fp, ds)
    return decode(BytesIO(fp.getvalue()), implicit, True)


def test_worklist_plan_equals_response_for(archive: Archive) -> None:
    _fill_orders(archive)
    book = OrderBook(archive)
    every = Dataset()  # an empty SPS item: every step key comes back; a code sequence asked for
    every.PatientName = ""
    every.AccessionNumber = ""
    every.RequestedProcedureCodeSequence = []
    every.ScheduledProcedureStepSequence = [Dataset()]
    checked = 0
    for q in [*_wl_queries(), every]:
        plan = WorklistPlan.of(q)
        assert plan is not None
        rows = book.worklist(keys_of(q))
        assert rows
        for row in rows:
            for implicit in (True, False):
                encoded = plan.encode(row, implicit=implicit)
                assert encoded is not None
                got = decode(BytesIO(encoded), implicit, True)
                assert got == _encoded(response_for(q, row), implicit)
                checked += 1
    coded = [r for r in book.worklist(keys_of(every)) if r["RequestedProcedureCodeSequence"]]
    assert coded and WorklistPlan(every).encode(coded[0], implicit=True) is not None
    assert checked > 2 * ORDERS


def test_worklist_plan_declines_what_it_cannot_encode() -> None:
    q = _wl_identifier()
    plan = WorklistPlan.of(q)
    assert plan is not None
    assert plan.encode({"PatientID": 12}, implicit=True) is None  # not text: response_for handles it
    q.add_new(0x00991010, "LO", "")  # a private key
    assert WorklistPlan.of(q) is None


@pytest.fixture(scope="module")
def worklist_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    mp = pytest.MonkeyPatch()
    ports: dict[str, int] = {}
    services = []
    try:
        for engine in ("fast", "pynetdicom"):
            mp.setenv("HILUM_DIMSE_ENGINE", engine)
            archive = Archive(tmp_path_factory.mktemp(f"mwl-{engine}"))
            _fill_orders(archive)
            svc = DimseService(Config(data_dir=archive.data_dir, aet="HILUM", dicom_port=free_port()), archive)
            svc.start()
            services.append((svc, archive))
            ports[engine] = svc.port
        mp.undo()
        yield ports
    finally:
        mp.undo()
        for svc, archive in services:
            svc.stop()
            archive.close()


def test_fast_worklist_answers_equal_pynetdicom_engine(worklist_nodes: dict[str, int]) -> None:
    qs = _wl_queries()
    fast = _find(worklist_nodes["fast"], "HILUM", qs, MODALITY_WORKLIST_FIND)
    slow = _find(worklist_nodes["pynetdicom"], "HILUM", qs, MODALITY_WORKLIST_FIND)
    assert [len(a) for a in fast] == [len(a) for a in slow]
    assert len(fast[0]) == 40
    assert fast == slow


@pytest.mark.skipif(not HAS_ORTHANC or not Path(WORKLIST_PLUGIN).exists(), reason="Orthanc worklist plugin missing")
def test_worklist_answers_equal_orthanc(tmp_path: Path, worklist_nodes: dict[str, int]) -> None:
    wl = tmp_path / "worklists"
    wl.mkdir()
    for s in _order_specs():
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = s["name"], s["pid"], "19700101", "F"
        ds.AccessionNumber, ds.StudyInstanceUID = s["acc"], s["uid"]
        ds.RequestedProcedureID = s["acc"]
        item = Dataset()
        item.ScheduledStationAETitle, item.Modality = s["station"], s["modality"]
        item.ScheduledProcedureStepStartDate, item.ScheduledProcedureStepStartTime = s["date"], s["time"]
        item.ScheduledProcedureStepID, item.ScheduledProcedureStepStatus = s["acc"], "SCHEDULED"
        ds.ScheduledProcedureStepSequence = [item]
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = "1.2.276.0.7230010.3.1.0.1"
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(wl / f"{s['acc']}.wl", enforce_file_format=True)
    cfg = _orthanc_config(
        tmp_path,
        Plugins=[WORKLIST_PLUGIN],
        DicomAlwaysAllowFindWorklist=True,
        Worklists={"Enable": True, "Database": str(wl)},
    )

    def ready() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{cfg['HttpPort']}/system", timeout=2):
            return True

    qs = _wl_queries()
    with orthanc_process(tmp_path, cfg, ready):
        theirs = _find(int(cfg["DicomPort"]), "ORTHANC", qs, MODALITY_WORKLIST_FIND)
    ours = _find(worklist_nodes["fast"], "HILUM", qs, MODALITY_WORKLIST_FIND)
    for a, b in zip(ours, theirs, strict=True):
        assert a and _wl_keys(a) == _wl_keys(b)


def test_pack_pdvs_keeps_each_pdu_within_the_peer_limit() -> None:
    pdvs = [(1, b"\x03" + bytes(60)), (1, b"\x00" + bytes(50)), (1, b"\x02" + bytes(10))]
    assert pack_pdvs(pdvs, 0) == [pdvs]
    assert pack_pdvs(pdvs, 66 + 56) == [pdvs[:2], pdvs[2:]]  # items are 5 bytes + the PDV
    assert pack_pdvs(pdvs, 66) == [[p] for p in pdvs]
