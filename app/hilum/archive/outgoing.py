"""Today's demographics on what leaves: a stored file's patient module set to the registry's values.

IHE RAD TF-2 RAD-12 (Patient Update) and TF-1 Patient Information
Reconciliation: after the ADT system updated (A08) or merged (A40) a
patient, the image manager hands out the corrected demographics, not the
ones the modality wrote.  The stored file is the archive's record of what
was received and stays as it is; the correction is made on the way out
(:meth:`hilum.archive.Archive.read_outgoing`), from the registry's current
values.  The history of what ADT changed is in ``patient_history``.

Corrected: the Patient Identification and Demographic attributes the
registry keeps (PS3.3 C.7.1.1 Patient Module) — Patient's Name, Patient ID,
Issuer of Patient ID (and its qualifiers when the issuer changes), Patient's
Birth Date, Patient's Sex.  Nothing else changes: every UID, the transfer
syntax, the pixel data and every other element keep their bytes.  Text the
file's Specific Character Set cannot hold (a name in Greek for an ISO_IR 100
file) switches the data set to UTF-8 (``ISO_IR 192``, PS3.3 C.12.1.1.2),
every text element decoded and re-encoded so nothing else reads differently.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import pydicom
from pydicom.charset import python_encoding
from pydicom.dataset import Dataset

from hilum.archive.patients import PatientState

log = logging.getLogger(__name__)

UTF8 = "ISO_IR 192"


def _wanted(state: PatientState) -> dict[str, str]:
    return {"PatientName": state.name, "PatientID": state.patient_id, "IssuerOfPatientID": state.issuer,
            "PatientBirthDate": state.birth_date, "PatientSex": state.sex}


def _current(ds: Dataset, keyword: str) -> str:
    value: Any = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _fits(ds: Dataset, values: list[str]) -> bool:
    """Whether the data set's Specific Character Set can encode ``values`` as it is."""
    text = "".join(values)
    if text.isascii():
        return True
    terms = ds.get("SpecificCharacterSet") or []
    terms = [terms] if isinstance(terms, str) else list(terms)
    if len(terms) != 1:
        return False  # none (the default repertoire) or ISO 2022 code extensions: re-encode as UTF-8
    codec = python_encoding.get(str(terms[0]).strip())
    if codec is None:
        return False
    try:
        text.encode(codec)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def corrected(data: bytes, state: PatientState) -> bytes:
    """``data`` (a Part 10 file) with its patient module set to ``state``; ``data`` itself when it
    already carries those values."""
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    wanted = _wanted(state)
    changed = {k: v for k, v in wanted.items() if _current(ds, k) != v}
    if not changed:
        return data
    if not _fits(ds, list(changed.values())):
        ds.decode()  # every text element to str, re-encoded below in UTF-8
        ds.SpecificCharacterSet = UTF8
    for keyword, value in changed.items():
        if keyword == "IssuerOfPatientID" and not value:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
        if keyword == "IssuerOfPatientID" and "IssuerOfPatientIDQualifiersSequence" in ds:
            del ds.IssuerOfPatientIDQualifiersSequence  # it qualified the issuer that went
    out = io.BytesIO()
    ds.save_as(out)
    log.debug("outgoing instance: patient module corrected (%s)", ", ".join(sorted(changed)))
    return out.getvalue()
