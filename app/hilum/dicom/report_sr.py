"""A radiology report as an Enhanced SR (PS3.3 A.35.2), built with highdicom, and read back.

The content tree follows TID 2000 "Basic Diagnostic Imaging Report" (PS3.16):
the root CONTAINER "Diagnostic Imaging Report" (LN 18748-4) holds the author
as observation context (TID 1002: Observer Type Person, Person Observer
Name), then one CONTAINER per section, titled with a heading of CID 7001
(Indications for Procedure, Current Procedure Descriptions, Prior Procedure
Descriptions, Findings, Impressions, Recommendations, Addendum) and holding
the section's text as a TEXT item of CID 7002 (Finding, Impression, ...).
A section the standard has no heading for gets a private code
(``99HILUM``, its key, its title).  The study's key images are IMAGE items
"Best illustration of finding" (DCM 121080) and its measurement SRs are
COMPOSITE items "Source of Measurement" (DCM 121112) in the Findings
container, so a reader can follow them.

Flags (PS3.3 C.17.2): Completion Flag PARTIAL until signed, COMPLETE then;
Verification Flag UNVERIFIED until signed, VERIFIED with the Verifying
Observer Sequence (name, organisation, date-time) then; Preliminary Flag
PRELIMINARY / FINAL.  An addendum or a re-issue names what it replaces in
the Predecessor Documents Sequence (C.17.2.3).

Pure: no database, no network.  :mod:`hilum.archive.reports` calls it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.valuerep import DA, TM

import hilum

__all__ = ["ReportContent", "SECTION_CODES", "make_report_sr", "read_report_sr", "REPORT_TITLE"]

MANUFACTURER = "Hilum"
PRIVATE_SCHEME = "99HILUM"
REPORT_TITLE = Code("18748-4", "LN", "Diagnostic Imaging Report")
BEST_ILLUSTRATION = Code("121080", "DCM", "Best illustration of finding")
SOURCE_OF_MEASUREMENT = Code("121112", "DCM", "Source of Measurement")

# section key -> (heading, CID 7001; text item concept, CID 7002)
SECTION_CODES: dict[str, tuple[Code, Code]] = {
    "indication": (Code("121109", "DCM", "Indications for Procedure"), Code("121071", "DCM", "Finding")),
    "history": (Code("121060", "DCM", "History"), Code("121071", "DCM", "Finding")),
    "technique": (
        Code("121064", "DCM", "Current Procedure Descriptions"),
        Code("121065", "DCM", "Procedure Description"),
    ),
    "comparison": (
        Code("121066", "DCM", "Prior Procedure Descriptions"),
        Code("121065", "DCM", "Procedure Description"),
    ),
    "findings": (Code("121070", "DCM", "Findings"), Code("121071", "DCM", "Finding")),
    "impression": (Code("121072", "DCM", "Impressions"), Code("121073", "DCM", "Impression")),
    "recommendation": (Code("121074", "DCM", "Recommendations"), Code("121075", "DCM", "Recommendation")),
    "conclusion": (Code("121076", "DCM", "Conclusions"), Code("121077", "DCM", "Conclusion")),
    "addendum": (Code("121078", "DCM", "Addendum"), Code("121071", "DCM", "Finding")),
}
_KEY_OF_HEADING = {(h.scheme_designator, h.value): key for key, (h, _t) in SECTION_CODES.items()}


@dataclass
class ReportContent:
    """What :func:`read_report_sr` finds in a report SR."""

    sections: list[tuple[str, str, str]]  # (key, title, text) in document order
    complete: bool
    verified: bool
    final: bool
    author: str = ""
    verifier: str = ""
    verifying_organization: str = ""
    verified_at: str = ""
    key_images: list[str] = field(default_factory=list)  # SOP Instance UIDs
    measurement_srs: list[str] = field(default_factory=list)
    predecessors: list[str] = field(default_factory=list)


def _text_item(name: Code, value: str) -> hd.sr.TextContentItem:
    # TEXT is UT: unlimited, but an empty value is not allowed (Type 1)
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _section(key: str, title: str, text: str) -> hd.sr.ContainerContentItem:
    heading, element = SECTION_CODES.get(key) or (
        Code(key[:16] or "section", PRIVATE_SCHEME, title[:64] or key),
        Code("121071", "DCM", "Finding"),
    )
    item = hd.sr.ContainerContentItem(name=heading, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    item.ContentSequence = hd.sr.ContentSequence([_text_item(element, text)])
    return item


def make_report_sr(
    study: Dataset,
    sections: Sequence[tuple[str, str, str]],
    *,
    author: str,
    series_uid: str,
    sop_instance_uid: str,
    instance_number: int = 1,
    series_number: int = 9910,
    signed: bool = False,
    preliminary: bool = False,
    verifier: str = "",
    organization: str = "",
    institution: str = "",
    key_images: Sequence[Dataset] = (),
    measurement_srs: Sequence[Dataset] = (),
    predecessors: Sequence[Dataset] = (),
    description: str = "Report",
    when: datetime | None = None,
) -> Dataset:
    """An Enhanced SR of a report.

    ``study``: one instance (header) of the study, the source of the patient
    and study modules and the evidence when nothing else is referenced.
    ``sections``: ``(key, title, text)``; empty sections are left out.
    ``signed``: COMPLETE, VERIFIED by ``verifier`` of ``organization``, FINAL;
    otherwise PARTIAL, UNVERIFIED (and PRELIMINARY).  ``key_images`` and
    ``measurement_srs``: headers of the study's instances to reference.
    ``predecessors``: headers of the SRs this one replaces.
    """
    if signed and not verifier:
        raise ValueError("a signed report needs its verifier's name")
    when = when or datetime.now()
    root = hd.sr.ContainerContentItem(name=REPORT_TITLE, template_id="2000")
    items: list[Any] = []
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=person_name(author) or "UNKNOWN^"
        ),
    )
    items.extend(hd.sr.ObservationContext(observer_person_context=observer))
    findings: hd.sr.ContainerContentItem | None = None
    for key, title, text in sections:
        if not text.strip():
            continue
        item = _section(key, title, text)
        if key == "findings":
            findings = item
        items.append(item)
    refs: list[Any] = []
    for ds in key_images:
        refs.append(
            hd.sr.ImageContentItem(
                name=BEST_ILLUSTRATION,
                referenced_sop_class_uid=ds.SOPClassUID,
                referenced_sop_instance_uid=ds.SOPInstanceUID,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    for ds in measurement_srs:
        refs.append(
            hd.sr.CompositeContentItem(
                name=SOURCE_OF_MEASUREMENT,
                referenced_sop_class_uid=ds.SOPClassUID,
                referenced_sop_instance_uid=ds.SOPInstanceUID,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    if refs:
        if findings is None:
            findings = hd.sr.ContainerContentItem(
                name=SECTION_CODES["findings"][0], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
            findings.ContentSequence = hd.sr.ContentSequence([])
            items.append(findings)
        for r in refs:
            findings.ContentSequence.append(r)
    root.ContentSequence = hd.sr.ContentSequence(items)
    evidence = list({str(ds.SOPInstanceUID): ds for ds in [*key_images, *measurement_srs]}.values()) or [study]
    sr = hd.sr.EnhancedSR(
        evidence=evidence,
        content=root,
        series_instance_uid=series_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=signed,
        is_final=signed,
        is_verified=signed,
        institution_name=institution or None,
        verifying_observer_name=person_name(verifier) or None,
        verifying_organization=(organization or "Unknown") if signed else None,
        previous_versions=list(predecessors) or None,
        software_versions=hilum.__version__,
        series_description=description,
    )
    sr.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: report text is typed in any language
    if not signed:
        sr.PreliminaryFlag = "PRELIMINARY"
    sr.ContentDate = DA(when.strftime("%Y%m%d"))
    sr.ContentTime = TM(when.strftime("%H%M%S"))
    if not [*key_images, *measurement_srs]:
        # The study instance was only the source of the patient/study modules, not referenced evidence.
        if "CurrentRequestedProcedureEvidenceSequence" in sr:
            del sr.CurrentRequestedProcedureEvidenceSequence
    for kw in (
        "AccessionNumber",
        "ReferringPhysicianName",
        "StudyID",
        "StudyDate",
        "StudyTime",
        "StudyDescription",
        "PatientBirthDate",
        "PatientSex",
    ):
        if kw in study and kw not in sr:
            setattr(sr, kw, study.get(kw))
    return sr


def person_name(name: str) -> str:
    """A DICOM PN for a user's name: a login name without ``^`` becomes a family name (``name^``)."""
    name = (name or "").strip()
    return name if "^" in name or "=" in name or not name else name + "^"


def _walk(items: Any) -> Any:
    for item in items or []:
        yield item
        yield from _walk(item.get("ContentSequence"))


def read_report_sr(ds: Dataset) -> ReportContent:
    """The sections, flags, observers and references of a report SR (ours or another's TID 2000 report)."""
    sections: list[tuple[str, str, str]] = []
    author = ""
    key_images: list[str] = []
    measurements: list[str] = []
    for item in ds.get("ContentSequence", []):
        vt = str(item.get("ValueType", ""))
        name = item.ConceptNameCodeSequence[0] if item.get("ConceptNameCodeSequence") else None
        if vt == "PNAME" and name is not None and str(name.CodeValue) == "121008":
            author = str(item.PersonName).rstrip("^")
        if vt != "CONTAINER" or name is None:
            continue
        scheme, value = str(name.CodingSchemeDesignator), str(name.CodeValue)
        key = _KEY_OF_HEADING.get((scheme, value)) or (value if scheme == PRIVATE_SCHEME else value)
        texts = []
        for sub in _walk(item.get("ContentSequence")):
            svt = str(sub.get("ValueType", ""))
            if svt == "TEXT":
                texts.append(str(sub.TextValue))
            elif svt == "IMAGE":
                key_images.append(str(sub.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
            elif svt == "COMPOSITE":
                measurements.append(str(sub.ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
        if texts:
            sections.append((key, str(name.CodeMeaning), "\n".join(texts)))
    verifier = org = at = ""
    if ds.get("VerifyingObserverSequence"):
        v = ds.VerifyingObserverSequence[0]
        verifier, org, at = (
            str(v.VerifyingObserverName).rstrip("^"),
            str(v.VerifyingOrganization),
            str(v.VerificationDateTime),
        )
    predecessors = [
        str(i.ReferencedSOPInstanceUID)
        for study in ds.get("PredecessorDocumentsSequence", [])
        for series in study.get("ReferencedSeriesSequence", [])
        for i in series.get("ReferencedSOPSequence", [])
    ]
    return ReportContent(
        sections=sections,
        complete=str(ds.get("CompletionFlag", "")) == "COMPLETE",
        verified=str(ds.get("VerificationFlag", "")) == "VERIFIED",
        final=str(ds.get("PreliminaryFlag", "FINAL")) == "FINAL",
        author=author,
        verifier=verifier,
        verifying_organization=org,
        verified_at=at,
        key_images=key_images,
        measurement_srs=measurements,
        predecessors=predecessors,
    )
