"""Benchmark data: a CT set of N 512x512 instances, and many tiny single-instance studies.

Uses ``hilum.dicom.generator.write_ct_set`` when the project's generator is
available; otherwise a minimal fallback writes plain CT slices (random noise,
true enough for transfer benchmarks: ~514 KB each, Explicit VR Little Endian).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

ROOT = "1.2.826.0.1.3680043.10.1234."  # a private test root


def _meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def write_ct_set(out: Path, n: int, *, series_size: int = 250, rows: int = 512) -> list[Path]:
    """``n`` CT slices in studies of ``series_size`` (the project's generator when present)."""
    out.mkdir(parents=True, exist_ok=True)
    try:
        from hilum.dicom.generator import write_ct_set as project_ct_set
    except ImportError:
        project_ct_set = None
    if project_ct_set is not None:
        return list(project_ct_set(out, n, rows=rows, columns=rows, series_size=series_size))
    rng = np.random.default_rng(0)
    paths: list[Path] = []
    study = series = ""
    for i in range(n):
        if i % series_size == 0:
            study, series = generate_uid(ROOT), generate_uid(ROOT)
        sop = generate_uid(ROOT)
        ds = Dataset()
        ds.file_meta = _meta(CTImageStorage, sop)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID = f"Bench^Patient{i // series_size:03d}", f"BENCH{i // series_size:03d}"
        ds.StudyDate, ds.StudyTime, ds.Modality = "20260115", "080000", "CT"
        ds.AccessionNumber, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "A1", "1", 1, i % series_size + 1
        ds.ImagePositionPatient = [0, 0, float(i % series_size)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 1.0
        ds.Rows = ds.Columns = rows
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = rng.integers(0, 2000, (rows, rows), dtype=np.uint16).tobytes()
        path = out / f"ct{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_tiny_studies(out: Path, n: int) -> list[Path]:
    """``n`` single-instance studies (8x8 secondary capture) with varied names and dates."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    pixels = bytes(64)
    for i in range(n):
        sop = f"{ROOT}9.{i + 1}.3"
        ds = Dataset()
        ds.file_meta = _meta(SecondaryCaptureImageStorage, sop)
        ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = f"{ROOT}9.{i + 1}.1", f"{ROOT}9.{i + 1}.2"
        patient = i % 5000  # two studies per patient from 5,000 studies on; the same name for both
        ds.PatientName = f"{'ABCDEFGHIJKLMNOPQRST'[patient % 20]}{patient % 97:02d}^Test{patient % 7}"
        ds.PatientID = f"P{patient:05d}"
        ds.StudyDate = f"20{10 + i % 16:02d}{1 + i % 12:02d}{1 + i % 28:02d}"
        ds.StudyTime = f"{8 + i % 10:02d}{i % 60:02d}00"
        ds.AccessionNumber, ds.StudyID, ds.Modality = f"ACC{i:06d}", str(i % 1000), ("CT", "MR", "US", "OT")[i % 4]
        ds.StudyDescription = f"Study {i}"
        ds.SeriesNumber, ds.InstanceNumber, ds.ConversionType = 1, 1, "WSD"
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = pixels
        path = out / f"s{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_tiny_series(out: Path, n: int, tag: str = "8") -> list[Path]:
    """One study of ``n`` tiny instances in one series (a C-FIND with ``n`` matches at image level)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    study, series = f"{ROOT}{tag}.1", f"{ROOT}{tag}.2"
    for i in range(n):
        sop = f"{ROOT}{tag}.3.{i + 1}"
        ds = Dataset()
        ds.file_meta = _meta(SecondaryCaptureImageStorage, sop)
        ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID = "Many^Images", "PMANY"
        ds.StudyDate, ds.StudyTime = "20200101", "120000"
        ds.AccessionNumber, ds.StudyID, ds.Modality = "ACCMANY", "1", "OT"
        ds.StudyDescription = "Many images"
        ds.SeriesNumber, ds.InstanceNumber, ds.ConversionType = 1, i + 1, "WSD"
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = bytes(64)
        path = out / f"m{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
