"""Priors in the local archive: the same patient (ID + issuer, ADT-merged IDs), ranking, orders."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset

from hilum.archive import Archive
from hilum.archive.orders import OrderBook, OrderInfo, PatientInfo, StepInfo
from hilum.dicom.generator.people import Patient, make_study
from hilum.dicom.generator.series import generate_mr_series, iter_ct_series
from hilum.errors import NotFound
from hilum.priors import Prior, find_local_priors, rank

PATIENT = Patient("Prior^Paula", "PRI-0001", "19600101", "F")
OTHER = Patient("Other^Otto", "PRI-0002", "19700101", "M")


def small_study(
    patient: Patient,
    accession: str,
    date: str,
    *,
    modality: str = "CT",
    body_part: str = "CHEST",
    description: str = "",
    issuer: str = "",
    series: int = 1,
) -> Iterator[Dataset]:
    """A tiny study (8x8 pixels, 2 slices per series) with the attributes priors are ranked on."""
    study = make_study(
        patient,
        accession=accession,
        date=date,
        description=description or f"{modality} {body_part}",
        body_part=body_part,
        seed="priors-test",
    )
    for n in range(1, series + 1):
        if modality == "MR":
            it: Iterator[Dataset] = iter(generate_mr_series(study, rows=8, columns=8, slices=2, series_number=n))
        else:
            it = iter_ct_series(study, rows=8, columns=8, slices=2, series_number=n, noise_sigma=0.0)
        for ds in it:
            if issuer:
                ds.IssuerOfPatientID = issuer
            yield ds


def store(archive: Archive, datasets: Iterator[Dataset]) -> str:
    uid = ""
    for ds in datasets:
        assert archive.ingest(ds).ok
        uid = str(ds.StudyInstanceUID)
    return uid


@pytest.fixture
def history(archive: Archive) -> dict[str, str]:
    """One patient: a current chest CT, two earlier chest CTs, an abdomen CT, a head MR; and another patient."""
    uids = {
        "current": store(archive, small_study(PATIENT, "ACC-CUR", "20261102", series=2)),
        "ct_1y": store(archive, small_study(PATIENT, "ACC-1Y", "20251015")),
        "ct_2y": store(archive, small_study(PATIENT, "ACC-2Y", "20241101")),
        "abd_6m": store(archive, small_study(PATIENT, "ACC-ABD", "20260501", body_part="ABDOMEN")),
        "mr_3y": store(archive, small_study(PATIENT, "ACC-MR", "20231102", modality="MR", body_part="HEAD")),
        "other": store(archive, small_study(OTHER, "ACC-OTH", "20251102")),
    }
    return uids


def test_local_priors_are_the_patients_other_studies_ranked(archive: Archive, history: dict[str, str]) -> None:
    priors = find_local_priors(archive, history["current"])
    assert [p.study_uid for p in priors] == [history[k] for k in ("ct_1y", "ct_2y", "abd_6m", "mr_3y")]
    first = priors[0]
    assert isinstance(first, Prior)
    assert first.local and first.source == "local"
    assert (first.patient_id, first.issuer, first.study_date, first.accession) == ("PRI-0001", "", "20251015", "ACC-1Y")
    assert first.modalities == ("CT",) and first.body_parts == ("CHEST",)
    assert (first.n_series, first.n_instances) == (1, 2)
    assert first.reason == "same modality and body part, 1 y earlier"
    assert priors[1].reason == "same modality and body part, 2 y earlier"
    assert priors[2].reason == "same modality, 6 m earlier"
    assert priors[3].reason == "other modality (MR), 3 y earlier"
    assert [p.score for p in priors] == sorted((p.score for p in priors), reverse=True)
    assert 3 < priors[0].score < 4 and 2 < priors[2].score < 3 and 1 < priors[3].score < 2
    # From a prior's point of view the current study is a later one: listed after the earlier ones.
    from_prior = find_local_priors(archive, history["ct_1y"])
    assert [p.study_uid for p in from_prior][:2] == [history["ct_2y"], history["current"]]
    assert from_prior[1].reason == "same modality and body part, 1 y later"


def test_unknown_study_and_study_without_priors(archive: Archive, history: dict[str, str]) -> None:
    with pytest.raises(NotFound):
        find_local_priors(archive, "1.2.3.4")
    assert find_local_priors(archive, history["other"]) == []


def test_issuer_keeps_patients_with_the_same_id_apart(archive: Archive, history: dict[str, str]) -> None:
    elsewhere = store(archive, small_study(PATIENT, "ACC-ELSE", "20220101", issuer="OTHER-HOSPITAL"))
    assert elsewhere not in {p.study_uid for p in find_local_priors(archive, history["current"])}
    assert find_local_priors(archive, elsewhere) == []


def test_ids_merged_by_adt_are_the_same_patient(archive: Archive, history: dict[str, str]) -> None:
    temp = Patient("Unknown^Emergency", "TEMP-77", "", "")
    before = store(archive, small_study(temp, "ACC-ER", "20260101"))
    book = OrderBook(archive)
    with book.transaction() as tx:  # ADT^A40: TEMP-77 merged into PRI-0001
        assert tx.merge_patients(PatientInfo("PRI-0001", name="Prior^Paula"), "TEMP-77")
    assert archive.patient_aliases("PRI-0001") == [("PRI-0001", ""), ("TEMP-77", "")]
    assert archive.patient_aliases("TEMP-77") == [("TEMP-77", ""), ("PRI-0001", "")]
    # A study sent after the merge, still under the old ID, is found too.
    after = store(archive, small_study(temp, "ACC-ER2", "20260102"))
    found = {p.study_uid: p for p in find_local_priors(archive, history["current"])}
    assert before in found and after in found
    assert found[after].patient_id == "TEMP-77"
    assert history["current"] in {p.study_uid for p in find_local_priors(archive, after)}
    # Transitive: PRI-0001 merged on into PRI-9999.
    with book.transaction() as tx:
        assert tx.merge_patients(PatientInfo("PRI-9999", name="Prior^Paula"), "PRI-0001")
    assert set(archive.patient_aliases("TEMP-77")) == {("TEMP-77", ""), ("PRI-0001", ""), ("PRI-9999", "")}
    assert history["current"] in {p.study_uid for p in find_local_priors(archive, after)}


def test_an_ordered_study_finds_the_priors_of_its_patient(archive: Archive, history: dict[str, str]) -> None:
    book = OrderBook(archive)
    with book.transaction() as tx:
        pk = tx.upsert_patient(PatientInfo("PRI-0001", name="Prior^Paula"), "order")
        tx.create_order(
            pk,
            OrderInfo(
                accession_number="ACC-NEW",
                description="MR head",
                steps=[StepInfo(modality="MR", start_date="20270101")],
            ),
        )
    order = book.order(accession="ACC-NEW")
    assert order is not None
    priors = find_local_priors(archive, order["study_uid"])
    assert len(priors) == 5 and priors[0].study_uid == history["mr_3y"]  # the ordered modality first
    assert priors[0].reason.startswith("same modality, ")


def test_rank_orders_by_class_then_recency() -> None:
    def p(uid: str, d: str, mods: tuple[str, ...], parts: tuple[str, ...]) -> Prior:
        return Prior(uid, "P", "", d, "", "", "", mods, parts, 1, 1, "local", True, 0.0, "")

    cands = [
        p("mr", "20250101", ("MR",), ("CHEST",)),
        p("ct-old", "20200101", ("CT",), ("CHEST",)),
        p("ct-sr", "20240101", ("SR",), ()),
        p("ct-head", "20250601", ("CT", "SR"), ("HEAD",)),
        p("ct-new", "20250101", ("CT",), ("CHEST",)),
        p("undated", "", ("CT",), ("CHEST",)),
    ]
    current = {"ModalitiesInStudy": "CT\\SR", "BodyPartExamined": "chest", "StudyDate": "20260101"}
    ranked = rank(current, cands)
    assert [x.study_uid for x in ranked] == ["ct-new", "ct-old", "undated", "ct-head", "mr", "ct-sr"]
    assert ranked[2].reason == "same modality and body part, date unknown"
    # The same with the describe_study field names.
    again = rank({"modalities": ("CT",), "body_parts": ("CHEST",), "study_date": "20260101"}, cands)
    assert [x.study_uid for x in again] == [x.study_uid for x in ranked]
    assert rank(current, []) == []
