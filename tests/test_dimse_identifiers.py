"""C-FIND pending responses encoded by ResponsePlan are the bytes pydicom writes for response_for's
data set, over real archive rows (non-ASCII names, numbers, dates, empty and unknown keys)."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.dsutils import encode

from hilum.archive import Archive
from hilum.dicom.generator import write_demo
from hilum.dimse.identifiers import ResponsePlan, query_of, response_for
from hilum.dimse.reactor import EncodedIdentifier, _encode
from hilum.dimse.uids import PATIENT_ROOT_FIND, STUDY_ROOT_FIND


def _identifier(level: str, keywords: list[str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for kw in keywords:
        setattr(ds, kw, None)  # an empty (universal) key
    return ds


IDENTIFIERS = {
    "PATIENT": ["PatientName", "PatientID", "PatientBirthDate", "PatientSex", "NumberOfPatientRelatedStudies"],
    "STUDY": ["StudyInstanceUID", "PatientName", "PatientID", "StudyDate", "StudyTime", "AccessionNumber",
              "ModalitiesInStudy", "StudyDescription", "NumberOfStudyRelatedInstances",
              "NumberOfStudyRelatedSeries", "ReferringPhysicianName", "RetrieveAETitle", "InstanceAvailability",
              "StudyID"],
    "SERIES": ["SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "BodyPartExamined",
               "NumberOfSeriesRelatedInstances"],
    "IMAGE": ["SOPInstanceUID", "SOPClassUID", "InstanceNumber", "Rows", "Columns", "NumberOfFrames",
              "ContentDate"],
}


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    folder = tmp_path_factory.mktemp("demo")
    a = Archive(tmp_path_factory.mktemp("data"))
    a.ingest_many(write_demo(folder, small=True))
    return a


@pytest.mark.parametrize("level", list(IDENTIFIERS))
@pytest.mark.parametrize("implicit", [True, False])
def test_plan_bytes_are_pydicoms(archive: Archive, level: str, implicit: bool) -> None:
    identifier = _identifier(level, IDENTIFIERS[level])
    identifier.ReferencedImageSequence = Sequence([])  # a sequence key: returned empty
    identifier.add_new(0x00091010, "LO", "")  # a private key: returned empty
    model = PATIENT_ROOT_FIND if level == "PATIENT" else STUDY_ROOT_FIND
    q_level, keys = query_of(identifier, model)
    rows = archive.query(q_level, keys)
    assert len(rows) >= 3
    plan = ResponsePlan(identifier, q_level, retrieve_aet="HILUM")
    non_ascii = 0
    for row in rows:
        expected = encode(response_for(identifier, q_level, row, retrieve_aet="HILUM"), implicit, True)
        got = plan.encode(row, implicit=implicit)
        assert got == expected, row
        non_ascii += b"ISO_IR 192" in got
    if level in ("PATIENT", "STUDY"):
        assert non_ascii >= 1  # the demo's Japanese and German names, in UTF-8


def test_plan_declines_what_it_cannot_encode_plainly() -> None:
    identifier = _identifier("STUDY", ["StudyInstanceUID", "Modality"])
    plan = ResponsePlan(identifier, "STUDY", retrieve_aet="HILUM")
    assert plan.encode({"StudyInstanceUID": "1.2.3", "Modality": "CTé"}, implicit=True) is None  # CS: ASCII only
    assert plan.encode({"StudyInstanceUID": "1.2.3", "Modality": "CT"}, implicit=True) is not None


def test_encoded_identifier_goes_through_pynetdicoms_encode() -> None:
    ds = Dataset()
    ds.PatientID = "X"
    assert _encode(EncodedIdentifier(b"abcd", True), True, True) == b"abcd"
    assert _encode(ds, True, True) == encode(ds, True, True)
    assert _encode(EncodedIdentifier(b"abcd", True), False, True) is None  # pynetdicom answers 0xC312
