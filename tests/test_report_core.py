"""Reports (hilum.archive.reports): states and locks, signing by role and password, addenda, events, the
order moving to COMPLETED, and the DICOM copies (Enhanced SR re-read by highdicom and pydicom, Encapsulated
PDF) stored through ingest, checked with dciodvfy and rendered with pdftoppm."""

from __future__ import annotations

import shutil
import subprocess
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from argon2 import PasswordHasher

from hilum.archive import Archive
from hilum.archive.orders import COMPLETED, OrderBook, OrderInfo, PatientInfo, StepInfo
from hilum.archive.reports import (
    AMENDED,
    DRAFT,
    FINAL,
    PRELIMINARY,
    ReportError,
    ReportLocked,
    Reports,
    Section,
    SignRefused,
    report_series_uids,
)
from hilum.archive.users import UserStore
from hilum.dicom.annotations import Annotation, KeyImage
from hilum.dicom.generator import MUELLER, generate_ct_series, make_study
from hilum.dicom.geometry import Spacing
from hilum.dicom.report_pdf import ENCAPSULATED_PDF, pdf_of
from hilum.dicom.report_sr import read_report_sr
from hilum.dicom.sr import make_kos, make_measurement_sr

STUDY = make_study(MUELLER, accession="ACC-REP1", seed="report-tests")
PASSWORD = "correct horse 1"
FAST_HASH = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def _series() -> list[pydicom.Dataset]:
    return generate_ct_series(STUDY, rows=32, columns=32, slices=3, noise_sigma=0.0)


@pytest.fixture
def filled(archive: Archive) -> dict:
    """A study with images, a key object and a measurement SR; an order for it; three users."""
    images = _series()
    for ds in images:
        assert archive.ingest(ds).ok
    heads = []
    for ds in images:
        h = pydicom.dcmread(BytesIO(archive.read(str(ds.SOPInstanceUID))), stop_before_pixels=True)
        heads.append(h)
    kos = make_kos(heads, [KeyImage(str(heads[1].SOPInstanceUID), 0, "", "")])
    assert archive.ingest(kos).ok
    frame = images[0].pixel_array.astype(float)
    ann = Annotation("length", str(images[0].SOPInstanceUID), 0, [(2.0, 3.0), (20.0, 25.0)], text="nodule")
    msr = make_measurement_sr(heads, [ann], {ann.uid: ann.values(frame, Spacing(0.7, 0.7, "PixelSpacing"), "HU")})
    assert archive.ingest(msr).ok
    book = OrderBook(archive)
    with book.transaction() as tx:
        p = tx.upsert_patient(PatientInfo(MUELLER.patient_id, name=MUELLER.name))
        tx.create_order(
            p,
            OrderInfo(
                accession_number=STUDY.accession,
                study_uid=STUDY.uid,
                description="CT chest",
                steps=[StepInfo(modality="CT", station_aet="CT1", start_date="20261102")],
            ),
        )
    users = UserStore.of(archive, hasher=FAST_HASH)
    users.add("drhouse", "radiologist", PASSWORD)
    users.add("viewer1", "viewer", PASSWORD)
    users.add("admin1", "admin", PASSWORD)
    return {"images": images, "kos": kos, "msr": msr, "users": users}


@pytest.fixture
def reports(archive: Archive, filled: dict) -> Reports:
    return Reports(archive, users=filled["users"], institution="Clinique des Tests", endpoints=["his"])


SECTIONS = [
    Section("indication", "Indication", "Toux chronique, fièvre — patient âgé."),
    Section("technique", "Technique", "CT thorax sans injection."),
    Section("findings", "Findings", "Nodule de 8 mm du lobe supérieur droit.\nPas d'épanchement."),
    Section("impression", "Impression", "Nodule pulmonaire isolé: contrôle à 3 mois."),
]


def _stored(archive: Archive, sop_uid: str) -> pydicom.Dataset:
    return pydicom.dcmread(BytesIO(archive.read(sop_uid)))


def test_draft_autosave_and_events(reports: Reports) -> None:
    r = reports.create(STUDY.uid, user="drhouse", template="ct-chest")
    assert r.state == DRAFT and [s.key for s in r.sections] == [
        "indication",
        "technique",
        "comparison",
        "findings",
        "impression",
    ]
    assert r.accession_number == STUDY.accession and r.order_fk is not None and r.patient_id == MUELLER.patient_id
    assert r.patient_name == MUELLER.name
    saved = reports.save(r.report_id, SECTIONS, user="drhouse")
    assert saved.section("findings").text.startswith("Nodule de 8 mm")  # type: ignore[union-attr]
    assert saved.updated_at >= r.updated_at
    again = reports.save(r.report_id, [{"key": "findings", "title": "Findings", "text": "v2"}], user="drhouse")
    assert [s.text for s in again.sections] == ["v2"]
    assert [(e.from_state, e.to_state, e.user) for e in reports.events(r.report_id)] == [("", DRAFT, "drhouse")]
    assert reports.for_study(STUDY.uid)[0].report_id == r.report_id
    assert reports.status_of([STUDY.uid, "1.2.3"]) == {STUDY.uid: DRAFT}
    with pytest.raises(ValueError):
        reports.save(r.report_id, [{"key": "a", "text": "x"}, {"key": "a", "text": "y"}], user="drhouse")


def test_viewer_admin_and_wrong_password_cannot_sign(reports: Reports) -> None:
    r = reports.create(STUDY.uid, user="drhouse")
    reports.save(r.report_id, SECTIONS, user="drhouse")
    with pytest.raises(SignRefused, match="only a radiologist"):
        reports.sign(r.report_id, user="viewer1", password=PASSWORD)
    with pytest.raises(SignRefused, match="only a radiologist"):
        reports.sign(r.report_id, user="admin1", password=PASSWORD)
    with pytest.raises(SignRefused, match="wrong password"):
        reports.sign(r.report_id, user="drhouse", password="not the password")
    with pytest.raises(SignRefused, match="wrong password"):
        reports.sign(r.report_id, user="nobody", password=PASSWORD)
    assert reports.get(r.report_id).state == DRAFT
    assert reports.outbox() == []
    assert len(reports.events(r.report_id)) == 1


def test_preliminary_then_sign_locks_stores_dicom_and_completes_order(
    reports: Reports, archive: Archive, filled: dict
) -> None:
    r = reports.create(STUDY.uid, user="drhouse", sections=SECTIONS)
    p = reports.set_preliminary(r.report_id, user="drhouse")
    assert p.state == PRELIMINARY and p.sr_sop_uid and p.pdf_sop_uid
    pre = read_report_sr(_stored(archive, p.sr_sop_uid))
    assert not pre.complete and not pre.verified and not pre.final
    reports.save(r.report_id, SECTIONS[:3], user="drhouse")  # a preliminary report can still change
    s = reports.sign(r.report_id, user="drhouse", password=PASSWORD)
    assert s.state == FINAL and s.signed_by == "drhouse" and s.signed_at is not None and s.locked
    assert s.sr_sop_uid != p.sr_sop_uid
    with pytest.raises(ReportLocked):
        reports.save(r.report_id, SECTIONS, user="drhouse")
    with pytest.raises(ReportLocked):
        reports.sign(r.report_id, user="drhouse", password=PASSWORD)
    with pytest.raises(ReportLocked):
        reports.set_preliminary(r.report_id, user="drhouse")
    assert [(e.from_state, e.to_state) for e in reports.events(r.report_id)] == [
        ("", DRAFT),
        (DRAFT, PRELIMINARY),
        (PRELIMINARY, FINAL),
    ]
    # the order moved to COMPLETED; one ORU queued for the endpoint
    assert OrderBook(archive).order(accession=STUDY.accession)["status"] == COMPLETED  # type: ignore[index]
    assert [(m.kind, m.endpoint, m.state) for m in reports.outbox()] == [("ORU", "his", "pending")]

    # the SR: pydicom and highdicom read it; flags, observer, sections, references, predecessor
    ds = _stored(archive, s.sr_sop_uid)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR
    assert ds.StudyInstanceUID == STUDY.uid and ds.PatientID == MUELLER.patient_id
    assert ds.SeriesInstanceUID == report_series_uids(STUDY.uid)[0]
    assert ds.CompletionFlag == "COMPLETE" and ds.VerificationFlag == "VERIFIED" and ds.PreliminaryFlag == "FINAL"
    v = ds.VerifyingObserverSequence[0]
    assert str(v.VerifyingObserverName) == "drhouse^" and v.VerifyingOrganization == "Clinique des Tests"
    assert v.VerificationDateTime
    doc = hd.sr.EnhancedSR.from_dataset(ds)
    assert doc.ConceptNameCodeSequence[0].CodeValue == "18748-4"
    content = read_report_sr(ds)
    assert content.complete and content.verified and content.final and content.author == "drhouse"
    assert [k for k, _t, _x in content.sections] == ["indication", "technique", "findings"]
    assert content.sections[2][2] == "Nodule de 8 mm du lobe supérieur droit.\nPas d'épanchement."
    assert content.key_images == [str(filled["images"][1].SOPInstanceUID)]
    assert content.measurement_srs == [str(filled["msr"].SOPInstanceUID)]
    assert content.predecessors == [p.sr_sop_uid]
    # the study's query shows the report series (C-FIND/QIDO use the same query)
    series = archive.query("SERIES", {"StudyInstanceUID": STUDY.uid})
    assert {"SR", "DOC"} <= {row["Modality"] for row in series}
    pdf_ds = _stored(archive, s.pdf_sop_uid)
    assert pdf_ds.SOPClassUID == ENCAPSULATED_PDF and pdf_ds.Modality == "DOC"
    assert pdf_of(pdf_ds).startswith(b"%PDF-")


def test_addendum_keeps_the_original(reports: Reports, archive: Archive) -> None:
    r = reports.create(STUDY.uid, user="drhouse", sections=SECTIONS)
    original = reports.sign(r.report_id, user="drhouse", password=PASSWORD)
    with pytest.raises(ReportError, match="only a signed report"):
        reports.addendum(reports.create(STUDY.uid, user="drhouse").report_id, user="drhouse")
    a = reports.addendum(r.report_id, user="drhouse")
    assert a.state == DRAFT and a.parent_id == r.report_id and a.version == 2
    with pytest.raises(ReportError, match="open already"):
        reports.addendum(r.report_id, user="drhouse")
    reports.save(a.report_id, [Section("addendum", "Addendum", "Le nodule mesure 9 mm, pas 8.")], user="drhouse")
    signed = reports.sign(a.report_id, user="drhouse", password=PASSWORD)
    assert signed.state == AMENDED
    after = reports.get(r.report_id)
    assert after.state == FINAL and after.sections == original.sections and after.sr_sop_uid == original.sr_sop_uid
    assert after.signed_at == original.signed_at
    with pytest.raises(ReportError, match="newer version"):
        reports.addendum(r.report_id, user="drhouse")
    content = read_report_sr(_stored(archive, signed.sr_sop_uid))
    assert content.predecessors == [original.sr_sop_uid]
    assert content.sections == [("addendum", "Addendum", "Le nodule mesure 9 mm, pas 8.")]
    assert read_report_sr(_stored(archive, original.sr_sop_uid)).sections[0][0] == "indication"
    assert reports.status_of([STUDY.uid])[STUDY.uid] == AMENDED
    priors = reports.priors(MUELLER.patient_id)
    assert [p.report_id for p in priors] == [a.report_id, r.report_id]
    assert reports.priors(MUELLER.patient_id, before="20261101") == []
    assert reports.priors(MUELLER.patient_id, exclude_study=STUDY.uid) == []


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed")
def test_sr_and_pdf_pass_dciodvfy(reports: Reports, archive: Archive, tmp_path: Path) -> None:
    r = reports.create(STUDY.uid, user="drhouse", sections=SECTIONS)
    s = reports.sign(r.report_id, user="drhouse", password=PASSWORD)
    a = reports.addendum(r.report_id, user="drhouse")
    reports.save(a.report_id, [Section("addendum", "Addendum", "Précision : 9 mm.")], user="drhouse")
    a = reports.sign(a.report_id, user="drhouse", password=PASSWORD)  # with a Predecessor Documents Sequence
    for uid in (s.sr_sop_uid, s.pdf_sop_uid, a.sr_sop_uid, a.pdf_sop_uid):
        path = tmp_path / f"{uid}.dcm"
        path.write_bytes(archive.read(uid))
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], out.stdout + out.stderr


@pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="poppler-utils' pdftoppm is not installed")
def test_pdf_renders_a_page_with_ink(reports: Reports, archive: Archive, tmp_path: Path) -> None:
    from PIL import Image

    r = reports.create(STUDY.uid, user="drhouse", sections=SECTIONS)
    s = reports.sign(r.report_id, user="drhouse", password=PASSWORD)
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(pdf_of(_stored(archive, s.pdf_sop_uid)))
    subprocess.run(
        ["pdftoppm", "-png", "-r", "60", "-f", "1", "-l", "1", str(pdf), str(tmp_path / "page")], check=True, timeout=60
    )
    page = np.asarray(Image.open(next(tmp_path.glob("page*.png"))).convert("L"))
    dark = (page < 128).mean()
    assert 0.002 < dark < 0.2  # text on a white page
    text = subprocess.run(["pdftotext", str(pdf), "-"], capture_output=True, text=True, timeout=60).stdout
    assert "Müller" in text and "épanchement" in text and "Electronically signed by" in text


def test_state_survives_reopening_the_archive(filled: dict, archive: Archive, data_dir: Path) -> None:
    rep = Reports(archive, users=filled["users"], store_dicom=False)
    r = rep.create(STUDY.uid, user="drhouse", sections=SECTIONS)
    archive.close()
    with Archive(data_dir) as again:
        back = Reports(again, users=UserStore.of(again, hasher=FAST_HASH), store_dicom=False).get(r.report_id)
    assert back.sections == tuple(SECTIONS) and back.state == DRAFT


def test_two_signatures_at_once_make_one(reports: Reports) -> None:
    """Two threads sign the same draft at once: one wins, the other is told it is signed; one event, one ORU."""
    import threading

    r = reports.create(STUDY.uid, user="drhouse", sections=SECTIONS)
    fast = Reports(reports.archive, users=reports.users, endpoints=["his"], store_dicom=False)
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def sign() -> None:
        barrier.wait()
        try:
            fast.sign(r.report_id, user="drhouse", password=PASSWORD)
            outcomes.append("signed")
        except ReportLocked:
            outcomes.append("locked")

    threads = [threading.Thread(target=sign) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["locked", "signed"]
    assert [e.to_state for e in reports.events(r.report_id)] == [DRAFT, FINAL]
    assert len(reports.outbox(report_id=r.report_id)) == 1
