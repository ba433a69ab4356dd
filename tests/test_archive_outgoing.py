"""What leaves carries today's demographics (issue 13 item 5, IHE PIR): ``Archive.read_outgoing``
after HL7 ADT A08 (update) and A40 (merge), at the archive level and over a real MLLP socket.

Stored files stay as received; what goes out has the registry's patient module, every UID and the
pixel data untouched; a patient ADT never touched goes out byte for byte (without being parsed);
the change is kept in the patient history with the message that made it."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from hl7.client import MLLPClient
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRBigEndian, ExplicitVRLittleEndian, RLELossless, generate_uid

from hilum.archive import Archive, outgoing
from hilum.archive.orders import MessageRef, OrderBook, PatientInfo
from hilum.config import Config
from hilum.hl7.message import ack_code_of
from hilum.hl7.service import HL7Service
from test_hl7 import adt, seg


def ct(patient_id: str, name: str, *, study: str | None = None, series: str | None = None, birth: str = "19700101",
       sex: str = "M", charset: str | None = "ISO_IR 100", syntax: str = ExplicitVRLittleEndian,
       issuer: str = "") -> bytes:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study or generate_uid(), series or generate_uid()
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient_id, name, birth, sex
    if issuer:
        ds.IssuerOfPatientID = issuer
    ds.StudyDescription = "Kopf nativ"
    ds.StudyDate, ds.StudyTime, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "20260301", "101500", "CT", 1, 1
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation, ds.SamplesPerPixel = 15, 1, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    pixels = np.arange(64, dtype=np.int16).reshape(8, 8)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CTImageStorage, ds.SOPInstanceUID
    if syntax == RLELossless:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.PixelData = pixels.tobytes()
        ds.compress(RLELossless, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = pixels.astype(">i2").tobytes() if syntax == ExplicitVRBigEndian else pixels.tobytes()
    buf = io.BytesIO()
    if syntax == ExplicitVRBigEndian:
        ds.save_as(buf, implicit_vr=False, little_endian=False)
    else:
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def arch(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Archive]:
    url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    a = Archive(tmp_path / "data", database_url=url)
    yield a
    a.close()


def row_of(a: Archive, sop: str) -> dict[str, Any]:
    [row] = a.query("IMAGE", {"SOPInstanceUID": sop})
    return row


def stored(a: Archive, sop: str) -> bytes:
    return a.read(sop)


def out(a: Archive, sop: str) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(a.read_outgoing(row_of(a, sop))))


def adt_update(a: Archive, info: PatientInfo, control: str = "C1") -> None:
    book = OrderBook(a)
    with book.transaction(MessageRef("ADT^A08", "HIS|HOSP", control)) as tx:
        tx.upsert_patient(info, "adt")


def assert_identity_kept(before: bytes, after: bytes) -> None:
    """Every UID, the transfer syntax and the pixel values are those of the stored file."""
    a, b = pydicom.dcmread(io.BytesIO(before)), pydicom.dcmread(io.BytesIO(after))
    for kw in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
        assert a[kw].value == b[kw].value, kw
    for kw in ("MediaStorageSOPInstanceUID", "MediaStorageSOPClassUID", "TransferSyntaxUID"):
        assert a.file_meta[kw].value == b.file_meta[kw].value, kw
    assert np.array_equal(a.pixel_array, b.pixel_array)
    assert a.StudyDescription == b.StudyDescription


def test_a_patient_adt_never_touched_goes_out_byte_for_byte(arch: Archive, monkeypatch: pytest.MonkeyPatch) -> None:
    sops = [arch.ingest(ct("P1", "Doe^John")).sop_instance_uid, arch.ingest(ct("P1", "Doe^Johnny")).sop_instance_uid]
    calls: list[Any] = []
    monkeypatch.setattr(outgoing, "corrected", lambda *a: calls.append(a) or b"")  # must not even be asked
    for sop in sops:
        assert sop is not None
        assert arch.read_outgoing(row_of(arch, sop)) == stored(arch, sop)
        # A row without the revision columns (built by hand) is looked up, with the same answer.
        assert arch.read_outgoing({"_blob_key": row_of(arch, sop)["_blob_key"], "SOPInstanceUID": sop}) \
            == stored(arch, sop)
    assert calls == []


def test_a08_rename_is_carried_by_what_leaves(arch: Archive) -> None:
    study = generate_uid()
    a1 = arch.ingest(ct("P1", "Doe^John", study=study)).sop_instance_uid
    a2 = arch.ingest(ct("P1", "Doe^John", study=study, syntax=RLELossless)).sop_instance_uid
    other = arch.ingest(ct("P2", "Roe^Richard")).sop_instance_uid
    assert a1 and a2 and other
    before = {s: stored(arch, s) for s in (a1, a2, other)}

    adt_update(arch, PatientInfo("P1", name="Doe^Jane", birth_date="19710203", sex="F"), control="MSG-A08-1")

    for sop in (a1, a2):
        ds = out(arch, sop)
        assert (str(ds.PatientName), ds.PatientBirthDate, ds.PatientSex, ds.PatientID) == \
            ("Doe^Jane", "19710203", "F", "P1")
        assert_identity_kept(before[sop], arch.read_outgoing(row_of(arch, sop)))
        assert stored(arch, sop) == before[sop]  # the stored file itself is untouched
    assert arch.read_outgoing(row_of(arch, other)) == before[other]  # another patient: as stored
    assert arch.query("PATIENT", {"PatientID": "P1"})[0]["PatientName"] == "Doe^Jane"
    with arch.engine.connect() as conn:
        [change] = arch.patients.history(conn, "P1")
    assert change["action"] == "update" and change["control_id"] == "MSG-A08-1"
    assert change["message_type"] == "ADT^A08" and change["sender"] == "HIS|HOSP"
    assert change["before"] == {"name": "Doe^John", "birth_date": "19700101", "sex": "M"}
    assert change["after"] == {"name": "Doe^Jane", "birth_date": "19710203", "sex": "F"}
    # An image arriving later with the old demographics does not overwrite the registry, and leaves
    # corrected; one that carries today's goes out byte for byte.
    late = arch.ingest(ct("P1", "Doe^John", study=study)).sop_instance_uid
    fresh = arch.ingest(ct("P1", "Doe^Jane", study=study, birth="19710203", sex="F")).sop_instance_uid
    assert late and fresh
    assert arch.query("PATIENT", {"PatientID": "P1"})[0]["PatientName"] == "Doe^Jane"
    assert str(out(arch, late).PatientName) == "Doe^Jane"
    assert arch.read_outgoing(row_of(arch, fresh)) == stored(arch, fresh)


def test_a40_merge_of_two_patients_with_studies(arch: Archive) -> None:
    prior = [arch.ingest(ct("TEMP7", "Unknown^Emergency", issuer="ER")).sop_instance_uid for _ in range(2)]
    kept = arch.ingest(ct("MRN7", "Kowalski^Jan")).sop_instance_uid
    assert all(prior) and kept
    before = {s: stored(arch, s) for s in [*prior, kept]}
    book = OrderBook(arch)
    with book.transaction(MessageRef("ADT^A40", "HIS|HOSP", "MSG-A40-1")) as tx:
        assert tx.merge_patients(PatientInfo("MRN7", name="Kowalski^Jan^Maria"), "TEMP7", "ER")
    assert arch.query("PATIENT", {"PatientID": "TEMP7"}) == []
    [patient] = arch.query("PATIENT", {"PatientID": "MRN7"})
    assert patient["NumberOfPatientRelatedStudies"] == 3
    for sop in [*prior, kept]:
        assert sop is not None
        ds = out(arch, sop)
        assert (ds.PatientID, str(ds.PatientName)) == ("MRN7", "Kowalski^Jan^Maria")
        assert "IssuerOfPatientID" not in ds  # the surviving record has no issuer
        assert_identity_kept(before[sop], arch.read_outgoing(row_of(arch, sop)))
    with arch.engine.connect() as conn:
        history = arch.patients.history(conn, "MRN7")
        assert [h["action"] for h in history] == ["update", "merge"]
        assert history[-1]["prior_patient_id"] == "TEMP7" and history[-1]["control_id"] == "MSG-A40-1"
        assert arch.patients.history(conn, "TEMP7", "ER") == [history[-1]]


def test_a_name_the_file_charset_cannot_hold_switches_it_to_utf8(arch: Archive) -> None:
    sop = arch.ingest(ct("P1", "Muller^Jurgen", charset="ISO_IR 100")).sop_instance_uid
    assert sop
    adt_update(arch, PatientInfo("P1", name="Παπαδόπουλος^Γιώργος"))
    ds = out(arch, sop)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Παπαδόπουλος^Γιώργος"
    assert ds.StudyDescription == "Kopf nativ"
    # A Latin-1 name stays in the file's own character set.
    adt_update(arch, PatientInfo("P1", name="Müller^Jürgen"), control="C2")
    ds = out(arch, sop)
    assert ds.SpecificCharacterSet == "ISO_IR 100" and str(ds.PatientName) == "Müller^Jürgen"


def test_big_endian_files_are_corrected_in_their_own_syntax(arch: Archive) -> None:
    sop = arch.ingest(ct("P1", "Doe^John", syntax=ExplicitVRBigEndian)).sop_instance_uid
    assert sop
    before = stored(arch, sop)
    adt_update(arch, PatientInfo("P1", name="Doe^Jane"))
    after = arch.read_outgoing(row_of(arch, sop))
    assert str(pydicom.dcmread(io.BytesIO(after)).PatientName) == "Doe^Jane"
    assert_identity_kept(before, after)


def test_registry_policy_adt_wins_images_and_orders_only_fill(arch: Archive) -> None:
    """THE patient registry's one policy, for every source (hilum.archive.patients)."""
    book = OrderBook(arch)
    arch.ingest(ct("P1", "Image^Name", birth="", sex=""))  # an image creates the patient
    with book.transaction() as tx:
        tx.upsert_patient(PatientInfo("P1", name="Order^Name", birth_date="19800101"), "order")
    [p] = arch.query("PATIENT", {"PatientID": "P1"})
    assert (p["PatientName"], p["PatientBirthDate"], p["PatientSex"]) == ("Image^Name", "19800101", "")
    adt_update(arch, PatientInfo("P1", name="Adt^Name", sex="F"))
    arch.ingest(ct("P1", "Image^Other", birth="19990909", sex="M"))  # an image never overwrites
    with book.transaction() as tx:
        tx.upsert_patient(PatientInfo("P1", name="Order^Other", sex="M"), "order")
    [p] = arch.query("PATIENT", {"PatientID": "P1"})
    assert (p["PatientName"], p["PatientBirthDate"], p["PatientSex"]) == ("Adt^Name", "19800101", "F")
    adt_update(arch, PatientInfo("P1", birth_date=""), control="C2")  # HL7 "" clears; unsent fields stay
    [p] = arch.query("PATIENT", {"PatientID": "P1"})
    assert (p["PatientName"], p["PatientBirthDate"], p["PatientSex"]) == ("Adt^Name", "", "F")


# ----------------------------------------------------------------------------- over a real MLLP socket


def send(svc: HL7Service, text: str) -> str:
    with MLLPClient("127.0.0.1", svc.port) as client:
        raw = client.send_message(text)
    return ack_code_of(raw.strip(b"\x0b\x1c\r"))[0]


def test_hl7_over_mllp_into_read_outgoing(archive: Archive, tmp_path: Path) -> None:
    svc = HL7Service(Config(data_dir=tmp_path), archive, host="127.0.0.1", port=0, frame_timeout=2)
    svc.start()
    try:
        jan = archive.ingest(ct("MRN1", "Nowak^Jan")).sop_instance_uid
        tmp = archive.ingest(ct("TMP1", "Unknown^Trauma")).sop_instance_uid
        assert jan and tmp
        before = {jan: stored(archive, jan), tmp: stored(archive, tmp)}
        assert send(svc, adt("A08", "W1", "MRN1", "Nowak^Janusz", birth="19650405", sex="M")) == "AA"
        ds = out(archive, jan)
        assert (str(ds.PatientName), ds.PatientBirthDate) == ("Nowak^Janusz", "19650405")
        assert send(svc, adt("A40", "W2", "MRN1", "Nowak^Janusz", birth="19650405",
                             extra=(seg("MRG", {1: "TMP1^^^HOSP^MR"}),))) == "AA"
        ds = out(archive, tmp)
        assert (ds.PatientID, str(ds.PatientName), ds.PatientBirthDate) == ("MRN1", "Nowak^Janusz", "19650405")
        for sop in (jan, tmp):
            assert_identity_kept(before[sop], archive.read_outgoing(row_of(archive, sop)))
            assert stored(archive, sop) == before[sop]
        # The same message again (same control ID) changes nothing and records nothing more.
        assert send(svc, adt("A08", "W1", "MRN1", "Other^Name")) == "AA"
        assert archive.query("PATIENT", {"PatientID": "MRN1"})[0]["PatientName"] == "Nowak^Janusz"
        with archive.engine.connect() as conn:
            history = archive.patients.history(conn, "MRN1")
        assert [(h["action"], h["control_id"]) for h in history] == [("update", "W1"), ("merge", "W2")]
    finally:
        svc.stop()
