"""Synthetic patients and studies, with deterministic UIDs.

Names deliberately cover the character sets a PACS meets (PS3.5 6.1 and
Annex H/I): the default repertoire, ISO_IR 100 (Latin-1), ISO_IR 192 (UTF-8)
and the Japanese ISO 2022 IR 87 code extension with its three-component
person name (alphabetic = ideographic = phonetic, PS3.5 6.2.1.2).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

_NAMESPACE = uuid.UUID("6f1d2c4e-3b1a-5d2e-9c8f-48696c756d00")


def deterministic_uid(*parts: object) -> str:
    """A UID derived from ``parts``: ``2.25.`` + a name-based (SHA-1, v5) UUID as an integer.

    PS3.5 B.2 allows UIDs made from a UUID under the ``2.25`` root; a name-based
    UUID gives the same UID for the same parts, so generated data sets are
    reproducible.  (``pydicom.uid.generate_uid(prefix=None)`` ignores its
    entropy sources, hence this helper.)
    """
    name = "/".join(str(p) for p in parts)
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"


@dataclass(frozen=True)
class Patient:
    """A patient: the Patient module (PS3.3 C.7.1.1) plus the Specific Character Set
    (0008,0005) that can encode its name; ``()`` means the default repertoire."""

    name: str
    patient_id: str
    birth_date: str
    sex: str
    character_set: tuple[str, ...] = ()

    @property
    def specific_character_set(self) -> str | list[str] | None:
        """The value for (0008,0005): ``None`` when not needed, a string when single-valued."""
        if not self.character_set:
            return None
        if len(self.character_set) == 1:
            return self.character_set[0]
        return list(self.character_set)


MUELLER = Patient("Müller^Jürgen", "HIL-0001", "19580317", "M", ("ISO_IR 100",))
PAPADOPOULOU = Patient("Παπαδοπούλου^Ελένη", "HIL-0002", "19710922", "F", ("ISO_IR 192",))
YAMADA = Patient("Yamada^Tarou=山田^太郎=やまだ^たろう", "HIL-0003", "19650704", "M", ("", "ISO 2022 IR 87"))
IVANOV = Patient("Иванов^Иван^Петрович", "HIL-0004", "19800130", "M", ("ISO_IR 192",))
DOE = Patient("Doe^Jane", "HIL-0005", "19900512", "F")

PATIENTS: tuple[Patient, ...] = (MUELLER, PAPADOPOULOU, YAMADA, IVANOV, DOE)
"""The demo's patients, in order."""


@dataclass(frozen=True)
class Study:
    """The General Study module (PS3.3 C.7.2.1) of one study, plus its patient."""

    patient: Patient
    uid: str
    date: str
    time: str
    accession: str
    description: str
    study_id: str = "1"
    body_part: str = "CHEST"
    referring_physician: str = "Hippocrates^Kos"
    frame_of_reference_uid: str = ""
    """Shared by the series of this study (same patient position), so MPR and
    reference lines relate them (PS3.3 C.7.4.1)."""


def make_study(
    patient: Patient,
    *,
    accession: str,
    date: str = "20261102",
    time: str = "093000",
    description: str = "CT Thorax",
    body_part: str = "CHEST",
    seed: int | str = 0,
) -> Study:
    """A study of ``patient`` whose UIDs follow from ``seed``, the patient ID and ``accession``."""
    uid = deterministic_uid("hilum-generator", seed, "study", patient.patient_id, accession)
    return Study(
        patient=patient,
        uid=uid,
        date=date,
        time=time,
        accession=accession,
        description=description,
        study_id=accession[-8:] if accession else "1",
        body_part=body_part,
        frame_of_reference_uid=deterministic_uid(uid, "frame-of-reference"),
    )
