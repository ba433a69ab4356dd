"""A radiology report as a PDF (fpdf2) and as a DICOM Encapsulated PDF (PS3.3 A.45.1).

For systems that only show documents: the PDF has a header with the
patient (name, ID, birth date, sex) and the study (description, date,
accession number), the report's sections (title in bold, text wrapped), and
a signature line ("Electronically signed by ... on ...", or "PRELIMINARY —
not signed").  Text is set in DejaVu Sans (Debian ``fonts-dejavu-core``), a
Unicode TrueType font, so accents, Greek or Cyrillic names print as typed;
the core PDF fonts would only take Latin-1.

:func:`make_encapsulated_pdf` wraps the bytes in an Encapsulated PDF
instance (SOP Class 1.2.840.10008.5.1.4.1.1.104.1) with the patient and
study modules of the study, the Encapsulated Document Series (Modality DOC),
SC Equipment (Conversion Type WSD: workstation) and Encapsulated Document
modules (MIME type, length, Document Title, Burned In Annotation YES).

Pure: no database, no network.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from fpdf import FPDF
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

import hilum

__all__ = ["ENCAPSULATED_PDF", "FONT_DIRS", "make_encapsulated_pdf", "make_report_pdf"]

ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
FONT_DIRS = (
    Path("/usr/share/fonts/truetype/dejavu"),
    Path("/usr/share/fonts/dejavu"),
    Path("/usr/local/share/fonts/dejavu"),
)
_PATIENT_KEYS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex")
_STUDY_KEYS = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)


def _font_dir() -> Path:
    for d in FONT_DIRS:
        if (d / "DejaVuSans.ttf").is_file() and (d / "DejaVuSans-Bold.ttf").is_file():
            return d
    raise FileNotFoundError("the DejaVu Sans font is missing: install the Debian package fonts-dejavu-core")


def _pn(value: object) -> str:
    """A DICOM PN for people: 'Family, Given Middle'."""
    parts = (str(value or "").split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (p.strip() for p in parts)
    first = " ".join(p for p in (prefix, given, middle) if p)
    name = f"{family}, {first}" if family and first else family or first
    return f"{name} {suffix}".strip()


def _date(value: object) -> str:
    s = str(value or "")
    return f"{s[:4]}-{s[4:6]}-{s[6:8]}" if len(s) >= 8 and s[:8].isdigit() else s


def make_report_pdf(
    study: Dataset,
    sections: Sequence[tuple[str, str, str]],
    *,
    title: str = "Radiology report",
    signed_by: str = "",
    signed_at: datetime | None = None,
    preliminary: bool = False,
    author: str = "",
    institution: str = "",
    addendum_of: str = "",
) -> bytes:
    """The report as PDF bytes (A4).  ``study``: an instance header of the study (patient and study
    modules).  ``sections``: ``(key, title, text)``; empty ones are left out."""
    fonts = _font_dir()
    pdf = FPDF(format="A4", unit="mm")
    pdf.set_title(title)
    pdf.set_creator(f"Hilum {hilum.__version__}")
    pdf.set_author(_pn(signed_by or author))
    pdf.add_font("DejaVu", "", str(fonts / "DejaVuSans.ttf"))
    pdf.add_font("DejaVu", "B", str(fonts / "DejaVuSans-Bold.ttf"))
    pdf.set_auto_page_break(True, margin=18)
    pdf.set_margins(18, 16, 18)
    pdf.add_page()
    width = pdf.epw
    if institution:
        pdf.set_font("DejaVu", "", 9)
        pdf.cell(width, 5, institution, new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("DejaVu", "B", 16)
    heading = title + (" — ADDENDUM" if addendum_of else "") + (" — PRELIMINARY" if preliminary else "")
    pdf.multi_cell(width, 8, heading, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    rows = [
        ("Patient", _pn(study.get("PatientName", ""))),
        ("Patient ID", str(study.get("PatientID", ""))),
        ("Birth date", _date(study.get("PatientBirthDate", ""))),
        ("Sex", str(study.get("PatientSex", ""))),
        ("Study", str(study.get("StudyDescription", ""))),
        ("Study date", _date(study.get("StudyDate", ""))),
        ("Accession", str(study.get("AccessionNumber", ""))),
        ("Referring", _pn(study.get("ReferringPhysicianName", ""))),
    ]
    for label, value in rows:
        if not value:
            continue
        pdf.set_font("DejaVu", "B", 10)
        pdf.cell(32, 5.5, label)
        pdf.set_font("DejaVu", "", 10)
        pdf.multi_cell(width - 32, 5.5, value, new_x="LMARGIN", new_y="NEXT")
    if addendum_of:
        pdf.set_font("DejaVu", "", 9)
        pdf.multi_cell(width, 5, f"Addendum to the report {addendum_of}.", new_x="LMARGIN", new_y="NEXT")
    y = pdf.get_y() + 2
    pdf.line(pdf.l_margin, y, pdf.l_margin + width, y)
    pdf.set_y(y + 3)
    for _key, sec_title, text in sections:
        if not text.strip():
            continue
        pdf.set_font("DejaVu", "B", 12)
        pdf.multi_cell(width, 7, sec_title, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("DejaVu", "", 11)
        pdf.multi_cell(width, 5.5, text.strip(), new_x="LMARGIN", new_y="NEXT")
        pdf.ln(3)
    pdf.ln(4)
    y = pdf.get_y()
    pdf.line(pdf.l_margin, y, pdf.l_margin + width, y)
    pdf.set_y(y + 2)
    pdf.set_font("DejaVu", "", 10)
    if signed_by and not preliminary:
        when = (signed_at or datetime.now()).strftime("%Y-%m-%d %H:%M")
        line = f"Electronically signed by {_pn(signed_by)} on {when}."
    else:
        line = "PRELIMINARY — not signed" + (f" (author: {_pn(author)})" if author else "") + "."
    pdf.multi_cell(width, 5.5, line, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def make_encapsulated_pdf(
    study: Dataset,
    pdf: bytes,
    *,
    series_uid: str,
    sop_instance_uid: str,
    instance_number: int = 1,
    series_number: int = 9911,
    title: str = "Radiology report",
    description: str = "Report (PDF)",
    when: datetime | None = None,
    institution: str = "",
) -> Dataset:
    """An Encapsulated PDF instance of ``pdf`` in the study of ``study`` (a header of one of its instances)."""
    when = when or datetime.now()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: whatever the study's names are written in
    ds.SOPClassUID = ENCAPSULATED_PDF
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate = when.strftime("%Y%m%d")
    ds.InstanceCreationTime = when.strftime("%H%M%S")
    for kw in _PATIENT_KEYS:
        if kw in study:
            setattr(ds, kw, study.get(kw))
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        if kw not in ds:
            setattr(ds, kw, "")
    for kw in _STUDY_KEYS:
        if kw in study:
            setattr(ds, kw, study.get(kw))
    for kw in ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        if kw not in ds:
            setattr(ds, kw, "")
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = description
    ds.Manufacturer = "Hilum"
    ds.SoftwareVersions = hilum.__version__
    if institution:
        ds.InstitutionName = institution
    ds.ConversionType = "WSD"
    ds.InstanceNumber = instance_number
    ds.ContentDate = when.strftime("%Y%m%d")
    ds.ContentTime = when.strftime("%H%M%S")
    ds.AcquisitionDateTime = when.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = title
    concept = Dataset()
    concept.CodeValue = "18748-4"
    concept.CodingSchemeDesignator = "LN"
    concept.CodeMeaning = "Diagnostic Imaging Report"
    ds.ConceptNameCodeSequence = [concept]
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    data = bytes(pdf)
    ds.EncapsulatedDocumentLength = len(data)
    ds.EncapsulatedDocument = data + (b"\0" if len(data) % 2 else b"")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(ENCAPSULATED_PDF)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def pdf_of(ds: Dataset) -> bytes:
    """The PDF inside an Encapsulated PDF instance (its padding byte removed)."""
    data = bytes(ds.EncapsulatedDocument)
    n = int(ds.get("EncapsulatedDocumentLength", len(data)) or len(data))
    return data[:n]
