"""PS3.4 C.2.2.2 matching as pure functions."""

import pytest

from hilum.dicom.matching import (
    Range,
    Single,
    UidList,
    Universal,
    Wildcard,
    normalize_time,
    parse_key,
    pn_groups,
)


def test_universal_matching():
    assert isinstance(parse_key("PatientName", ""), Universal)
    assert isinstance(parse_key("PatientID", None), Universal)
    assert isinstance(parse_key("StudyDate", "*"), Universal)
    assert parse_key("PatientID", "").matches("anything")


def test_single_value_is_exact_and_case_sensitive_except_pn():
    m = parse_key("PatientID", "ABC123")
    assert isinstance(m, Single)
    assert m.matches("ABC123") and not m.matches("abc123") and not m.matches("ABC1234")
    pn = parse_key("PatientName", "smith^john")
    assert pn.matches("SMITH^JOHN") and pn.matches("Smith^John^^^")
    assert not pn.matches("Smith^Johnny")


def test_wildcards():
    m = parse_key("PatientName", "sm?th*")
    assert isinstance(m, Wildcard)
    assert m.matches("Smith^John") and m.matches("SMYTHE") and not m.matches("Schmidt")
    m = parse_key("StudyDescription", "*HEAD*")
    assert m.matches("CT HEAD W/O") and not m.matches("ct head")
    assert Wildcard("X", "LO", pattern="a%b_*").like() == "a\\%b\\_%"


def test_pn_any_component_group_matches():
    name = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert pn_groups(name) == ("YAMADA^TAROU", "山田^太郎", "やまだ^たろう")
    assert parse_key("PatientName", "山田*").matches(name)
    assert parse_key("PatientName", "YAMADA*").matches(name)
    assert parse_key("PatientName", "==やまだ^たろう").matches(name)  # the phonetic group, named as such
    assert parse_key("PatientName", "müller*").matches("Müller^Jürgen")


def test_pn_component_groups_named_with_equals_each_constrain_their_own_group():
    """PS3.5 6.2.1 / PS3.4 C.2.2.2.4: a query value that names its groups matches group by group;
    a wildcard in one group does not make the whole key universal (it matched everyone before)."""
    yamada = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    yamamoto = "Yamamoto^Hanako=山本^花子=やまもと^はなこ"
    smith = "Smith^John"
    names = [yamada, yamamoto, smith]

    def hits(query: str) -> list[str]:
        m = parse_key("PatientName", query)
        return [n for n in names if m.matches(n)]

    assert hits("*=山田*") == [yamada]
    assert hits("*=山*") == [yamada, yamamoto]
    assert hits("=山田^太郎") == [yamada]
    assert hits("Yamada^Tarou=山田^太郎") == [yamada]
    assert hits("Yamamoto*=山田*") == []  # both groups must hold
    assert hits("==やま*") == [yamada, yamamoto]
    assert hits("=やまだ^たろう") == []  # a phonetic value in the ideographic group is not the phonetic name
    assert hits("SMITH*=") == [smith]
    assert hits("*=*") == names and hits("=") == names  # nothing constrained: universal


def test_date_ranges_including_open_ended():
    m = parse_key("StudyDate", "20200101-20201231")
    assert isinstance(m, Range)
    assert m.matches("20200615") and m.matches("20200101") and m.matches("20201231")
    assert not m.matches("20210101") and not m.matches("")
    assert parse_key("StudyDate", "-20200101").matches("19991231")
    assert not parse_key("StudyDate", "-20200101").matches("20200102")
    assert parse_key("StudyDate", "20200101-").matches("20991231")
    assert parse_key("StudyDate", "20200101").matches("20200101")
    with pytest.raises(ValueError):
        parse_key("StudyDate", "2020-13")
    with pytest.raises(ValueError):
        parse_key("StudyDate", "20201231-20200101")


def test_time_ranges_and_partial_times():
    assert normalize_time("14") == "140000.000000"
    assert normalize_time("14", upper=True) == "145959.999999"
    assert normalize_time("1430") == "143000.000000"
    assert normalize_time("143000.5") == "143000.500000"
    m = parse_key("StudyTime", "1000-1200")
    assert m.matches("1130") and m.matches("120059") and not m.matches("1201")
    assert parse_key("StudyTime", "14").matches("145501.25")
    assert parse_key("StudyTime", "-0800").matches("0759")


def test_datetime_range():
    m = parse_key("AcquisitionDateTime", "20200101120000-20200102")
    assert m.matches("20200101130000") and m.matches("20200102235959")
    assert not m.matches("20200101110000")


def test_uid_list_matching():
    m = parse_key("StudyInstanceUID", "1.2.3\\1.2.4")
    assert isinstance(m, UidList)
    assert m.matches("1.2.4") and not m.matches("1.2.5")
    m = parse_key("SOPInstanceUID", ["1.2", "1.3"])
    assert isinstance(m, UidList) and m.matches("1.3")


def test_modalities_in_study_matches_any_value():
    m = parse_key("ModalitiesInStudy", "MR")
    assert m.matches("CT\\MR") and not m.matches("CT\\US")
    assert parse_key("ModalitiesInStudy", ["US", "MR"]).matches("CT\\MR")
    # Several values in one string are the multi-valued key they stand for (PS3.4 C.6.2.1.2).
    assert parse_key("ModalitiesInStudy", "US\\MR") == parse_key("ModalitiesInStudy", ["US", "MR"])
    assert parse_key("ModalitiesInStudy", "US\\MR").matches("CT\\MR")
    assert isinstance(parse_key("ModalitiesInStudy", "\\"), Universal)
    assert isinstance(parse_key("ModalitiesInStudy", "M?"), Wildcard)


@pytest.fixture(params=["sqlite", "postgresql"])
def names_archive(request: pytest.FixtureRequest, tmp_path):  # type: ignore[no-untyped-def]
    """An archive (SQLite, and the suite's PostgreSQL) holding three patients with PN component groups."""
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    from hilum.archive import Archive

    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    archive = Archive(tmp_path / "data", database_url=url)
    for pid, name in (("Y1", "Yamada^Tarou=山田^太郎=やまだ^たろう"), ("Y2", "Yamamoto^Hanako=山本^花子=やまもと^はなこ"),
                      ("S1", "Smith^John")):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.PatientName, ds.PatientID, ds.Modality = name, pid, "OT"
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        assert archive.ingest(buf.getvalue()).status == "stored"
    yield archive
    archive.close()


def test_pn_component_groups_in_archive_queries(names_archive) -> None:  # type: ignore[no-untyped-def]
    """The index (C-FIND, QIDO-RS, the study browser) matches named component groups as the pure
    matcher does: ``*=山田*`` finds Yamada only (it found every patient before)."""

    def ids(value: str) -> list[str]:
        return sorted(r["PatientID"] for r in names_archive.query("STUDY", {"PatientName": value}))

    assert ids("*=山田*") == ["Y1"]
    assert ids("*=山*") == ["Y1", "Y2"]
    assert ids("=山本^花子") == ["Y2"]
    assert ids("Yamada*=山田*") == ["Y1"]
    assert ids("Yamamoto*=山田*") == []
    assert ids("==やま*") == ["Y1", "Y2"]
    assert ids("smith*=") == ["S1"]
    assert ids("山田*") == ["Y1"]  # one group given: any group may match, as before
    assert ids("*=*") == ["S1", "Y1", "Y2"]
    with pytest.raises(ValueError, match="alphabetic"):
        names_archive.query("STUDY", {"ReferringPhysicianName": "=山田*"})
