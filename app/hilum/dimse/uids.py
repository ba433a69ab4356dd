"""SOP Class UIDs the DIMSE adapter uses (PS3.4; PS3.6 Annex A).

pynetdicom creates its ``sop_class`` names at import time, which type
checkers cannot see; the few Hilum needs are spelled out here.
"""

from __future__ import annotations

from pydicom.uid import UID

VERIFICATION = UID("1.2.840.10008.1.1")
STORAGE_COMMITMENT_PUSH = UID("1.2.840.10008.1.20.1")
PATIENT_ROOT_FIND = UID("1.2.840.10008.5.1.4.1.2.1.1")
PATIENT_ROOT_MOVE = UID("1.2.840.10008.5.1.4.1.2.1.2")
PATIENT_ROOT_GET = UID("1.2.840.10008.5.1.4.1.2.1.3")
STUDY_ROOT_FIND = UID("1.2.840.10008.5.1.4.1.2.2.1")
STUDY_ROOT_MOVE = UID("1.2.840.10008.5.1.4.1.2.2.2")
STUDY_ROOT_GET = UID("1.2.840.10008.5.1.4.1.2.2.3")
