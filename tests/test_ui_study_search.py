"""The study browser's Qt-free logic: what users type → DICOM query values, rows → display text."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from hilum.ui.study_search import (
    STUDY_COLUMNS,
    StudyCriteria,
    StudySearch,
    format_date,
    format_modalities,
    format_person_name,
    format_size,
    format_time,
    name_pattern,
    order_by_for,
    prefix_pattern,
)


@pytest.mark.parametrize(
    ("typed", "value"),
    [
        ("", ""),
        ("  ", ""),
        ("mül", "mül*"),
        ("Müller, J", "Müller^J*"),
        ("doe,jane", "doe^jane*"),
        ("*tarou*", "*tarou*"),
        ("D?e", "D?e"),
    ],
)
def test_name_pattern(typed: str, value: str) -> None:
    assert name_pattern(typed) == value


def test_prefix_pattern_keeps_user_wildcards() -> None:
    assert prefix_pattern("ACC-1") == "ACC-1*"
    assert prefix_pattern("ACC-?001") == "ACC-?001"
    assert prefix_pattern("") == ""


def test_criteria_identifier() -> None:
    assert StudyCriteria().identifier() == {}
    assert StudyCriteria().empty
    c = StudyCriteria(
        patient_name="müll",
        patient_id="HIL",
        date_from=date(2026, 11, 5),
        date_to=date(2026, 11, 3),
        modality="mr",
        accession="A1",
    )
    assert c.identifier() == {
        "PatientName": "müll*",
        "PatientID": "HIL*",
        "AccessionNumber": "A1*",
        "StudyDate": "20261103-20261105",  # swapped into order
        "ModalitiesInStudy": "MR",
    }
    assert StudyCriteria(date_from=date(2026, 1, 2)).identifier() == {"StudyDate": "20260102-"}
    assert StudyCriteria(date_to=date(2026, 1, 2)).identifier() == {"StudyDate": "-20260102"}


@pytest.mark.parametrize(
    ("pn", "text"),
    [
        ("Müller^Jürgen", "Müller, Jürgen"),
        ("Иванов^Иван^Петрович", "Иванов, Иван Петрович"),
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", "Yamada, Tarou (山田 太郎)"),
        ("=山田^太郎", "山田 太郎"),
        ("Last^First^mid^pre", "pre Last, First mid"),
        ("Doe^John^^Dr^Jr", "Dr Doe, John, Jr"),
        ("^^^^", ""),
        ("", ""),
        (None, ""),
        ("Anonymous", "Anonymous"),
    ],
)
def test_format_person_name(pn: str | None, text: str) -> None:
    assert format_person_name(pn) == text


def test_format_helpers() -> None:
    assert format_date("20261102") == "2026-11-02"
    assert format_date("") == ""
    assert format_date("2026") == "2026"
    assert format_time("091500.000000") == "09:15"
    assert format_time("") == ""
    assert format_modalities("CT\\MR") == "CT, MR"
    assert format_size(0) == "0 B"
    assert format_size(1500) == "1.5 kB"
    assert format_size(182_513_616) == "183 MB"
    assert format_size(2.5e12) == "2.5 TB"


def test_order_by_for_columns() -> None:
    titles = [c.title for c in STUDY_COLUMNS]
    assert titles == [
        "Patient name",
        "Patient ID",
        "Birth date",
        "Sex",
        "Study date",
        "Description",
        "Modalities",
        "Accession",
        "Series",
        "Images",
    ]
    assert order_by_for(STUDY_COLUMNS, 0, False) == ["PatientName"]
    assert order_by_for(STUDY_COLUMNS, 4, True) == ["-StudyDate", "-StudyTime"]
    assert order_by_for(STUDY_COLUMNS, 9, True) == ["-NumberOfStudyRelatedInstances"]
    assert order_by_for(STUDY_COLUMNS, 99, True) is None


def test_search_runs_the_archive_query(archive, pydicom_files: Path) -> None:  # type: ignore[no-untyped-def]
    charset = pydicom_files.parent / "charset_files"
    files = sorted(p for p in charset.iterdir() if p.suffix == ".dcm")
    results = archive.ingest_many(files)
    assert sum(r.status == "stored" for r in results) >= 10
    search = StudySearch(archive)
    everything = search.studies(StudyCriteria())
    assert everything.total == archive.count("STUDY") == len(everything.rows)
    names = {format_person_name(r["PatientName"]) for r in everything.rows}
    assert {"Buc, Jérôme", "Äneas, Rüdiger", "Διονυσιος", "Люкceмбypг"} <= names
    # Case-insensitive person-name prefix, non-ASCII included (PS3.4 C.2.2.2.1.1 leaves case to us).
    hit = search.studies(StudyCriteria(patient_name="äneas"))
    assert [format_person_name(r["PatientName"]) for r in hit.rows] == ["Äneas, Rüdiger"]
    hit = search.studies(StudyCriteria(patient_name="*xiaodong"))
    assert len(hit.rows) == 2  # chrX1 and chrX2
    # Sorting by a column through the query's order_by, over the whole result.
    rows = search.studies(StudyCriteria(), order_by_for(STUDY_COLUMNS, 1, False)).rows
    assert [r["PatientID"] for r in rows] == sorted(r["PatientID"] for r in rows)
    # A limit still reports the total.
    small = StudySearch(archive, limit=3).studies(StudyCriteria())
    assert len(small.rows) == 3 and small.total == everything.total and small.truncated
    # A malformed value is an error in the result, not an exception.
    bad = search.studies(StudyCriteria(patient_id="x"), ["NoSuchKeyword"])
    assert bad.error and bad.rows == []
    series = search.series(everything.rows[0]["StudyInstanceUID"])
    assert len(series) == everything.rows[0]["NumberOfStudyRelatedSeries"]
