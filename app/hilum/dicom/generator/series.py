"""CT, MR, Enhanced CT and Secondary Capture datasets built from the phantom.

Every instance carries the modules its IOD requires (PS3.3 A.3 CT Image,
A.4 MR Image, A.38 Enhanced CT Image, A.8 Secondary Capture Image) with true
geometry: Image Position/Orientation (Patient), Pixel Spacing, Slice Thickness
and Spacing Between Slices describe exactly where the phantom was sampled
(PS3.3 C.7.6.2), so MPR, reference lines and measurements can be checked
against the phantom's known spheres.

All datasets come with a file meta information group (PS3.10 7.1) for
Explicit VR Little Endian; :mod:`.syntaxes` transcodes them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
)
from pydicom.valuerep import format_number_as_ds

from hilum.dicom.generator.people import Patient, Study, deterministic_uid
from hilum.dicom.generator.phantom import Phantom, noise_bank, plane_points, transform_points

Orientation = tuple[float, float, float, float, float, float]

AXIAL: Orientation = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
"""Rows run to the patient's left, columns to posterior: normal +z (superior)."""
CORONAL: Orientation = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL: Orientation = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)

CT_INTERCEPT = -1024
"""Rescale Intercept of the generated CT: HU = stored value - 1024 (slope 1)."""

MANUFACTURER = "Hilum"
MODEL = "Phantom Generator"
SOFTWARE_VERSION = "1"
_NOISE_BANK = 16


def rotate_orientation(orientation: Sequence[float], axis: str, degrees: float) -> Orientation:
    """Rotate both direction cosines of ``orientation`` about patient axis ``x``, ``y`` or ``z``."""
    t = math.radians(degrees)
    c, s = math.cos(t), math.sin(t)
    matrices = {
        "x": ((1, 0, 0), (0, c, -s), (0, s, c)),
        "y": ((c, 0, s), (0, 1, 0), (-s, 0, c)),
        "z": ((c, -s, 0), (s, c, 0), (0, 0, 1)),
    }
    if axis not in matrices:
        raise ValueError(f"axis must be 'x', 'y' or 'z', not {axis!r}")
    m = np.asarray(matrices[axis], dtype=np.float64)
    u = m @ np.asarray(orientation[:3], dtype=np.float64)
    v = m @ np.asarray(orientation[3:], dtype=np.float64)
    return (*(float(a) for a in u), *(float(a) for a in v))  # type: ignore[return-value]


OBLIQUE: Orientation = rotate_orientation(rotate_orientation(CORONAL, "x", 20.0), "z", 10.0)
"""A double-oblique coronal plane (20 degrees about x, then 10 degrees about z)."""


def _ds(value: float) -> str:
    """A DS string (at most 16 characters, PS3.5 6.2) for ``value``."""
    v = round(float(value), 10)
    return format_number_as_ds(0.0 if v == 0 else v)


def _ds_list(values: Sequence[float] | npt.NDArray[np.float64]) -> list[str]:
    return [_ds(v) for v in values]


@dataclass(frozen=True)
class StackGeometry:
    """Where a stack of parallel slices lies in patient space.

    Slice ``k`` (0-based instance order) lies at ``centre + offset_k * normal``
    with ``offset_k`` stepping by ``spacing`` (Spacing Between Slices) and the
    normal the cross product of the row and column direction cosines; with
    ``descending`` the instance order runs against the normal (head first for
    axial stacks).
    """

    rows: int
    columns: int
    pixel_spacing: tuple[float, float]
    """(row spacing, column spacing) in mm, the order of Pixel Spacing (0028,0030)."""
    orientation: Orientation
    centre: tuple[float, float, float]
    slices: int
    spacing: float
    descending: bool = False

    @property
    def row_direction(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.orientation[:3], dtype=np.float64)

    @property
    def column_direction(self) -> npt.NDArray[np.float64]:
        return np.asarray(self.orientation[3:], dtype=np.float64)

    @property
    def normal(self) -> npt.NDArray[np.float64]:
        return np.cross(self.row_direction, self.column_direction)

    def offset(self, k: int) -> float:
        """Signed distance of slice ``k`` from ``centre`` along the normal."""
        step = k - (self.slices - 1) / 2.0
        return -step * self.spacing if self.descending else step * self.spacing

    def position(self, k: int) -> npt.NDArray[np.float64]:
        """Image Position (Patient) of slice ``k``: the centre of its first pixel."""
        dr, dc = self.pixel_spacing
        return (
            np.asarray(self.centre, dtype=np.float64)
            + self.offset(k) * self.normal
            - (self.columns - 1) / 2.0 * dc * self.row_direction
            - (self.rows - 1) / 2.0 * dr * self.column_direction
        )

    def rounded_position(self, k: int) -> list[float]:
        """:meth:`position` as it is written (DS strings) and read back."""
        return [float(s) for s in _ds_list(self.position(k))]

    def rounded_orientation(self) -> list[float]:
        return [float(s) for s in _ds_list(self.orientation)]

    def points(self, k: int) -> npt.NDArray[np.float32]:
        """Patient coordinates of every pixel of slice ``k`` as written, shape (rows, columns, 3)."""
        o = self.rounded_orientation()
        return plane_points(self.rounded_position(k), o[:3], o[3:], self.rows, self.columns, self.pixel_spacing)


def stack_geometry(
    *,
    rows: int,
    columns: int,
    slices: int,
    fov: float,
    spacing: float,
    orientation: Sequence[float] = AXIAL,
    centre: Sequence[float] = (0.0, 0.0, 0.0),
    descending: bool = False,
) -> StackGeometry:
    """A stack with square pixels covering ``fov`` mm across the larger image side."""
    if rows < 1 or columns < 1 or slices < 1:
        raise ValueError(f"rows, columns and slices must be positive, got {rows}, {columns}, {slices}")
    if fov <= 0 or spacing <= 0:
        raise ValueError(f"fov and spacing must be positive, got {fov}, {spacing}")
    if len(orientation) != 6:
        raise ValueError("orientation needs six direction cosines")
    px = fov / max(rows, columns)
    return StackGeometry(
        rows=rows,
        columns=columns,
        pixel_spacing=(px, px),
        orientation=tuple(float(v) for v in orientation),  # type: ignore[arg-type]
        centre=(float(centre[0]), float(centre[1]), float(centre[2])),
        slices=slices,
        spacing=spacing,
        descending=descending,
    )


# ---------------------------------------------------------------------------- pixels
def ct_slices(
    geometry: StackGeometry,
    phantom: Phantom,
    *,
    seed: int = 0,
    noise_sigma: float = 10.0,
    phantom_transform: npt.ArrayLike | None = None,
) -> Iterator[npt.NDArray[np.int16]]:
    """Stored CT values (HU + 1024, int16) of each slice of ``geometry``, in instance order.

    ``phantom_transform`` (4x4) maps the series' patient coordinates to the
    phantom's: each pixel shows the phantom at the transformed point, so the
    anatomy of the series is the phantom moved by the transform's inverse (a
    patient lying differently in another Frame of Reference).

    Axial stacks without a transform take the fast path: the z-independent
    cross-section (plus ``_NOISE_BANK`` seeded noise fields) is computed once,
    and each slice only pastes the discs where spheres cut it.  Other
    orientations, and transformed sampling, sample the phantom at every pixel.
    """
    table = phantom.lookup("CT")
    bank = noise_bank((geometry.rows, geometry.columns), noise_sigma, _NOISE_BANK, seed)
    axial = np.allclose(geometry.rounded_orientation(), AXIAL)
    if not axial or phantom_transform is not None:
        for k in range(geometry.slices):
            pts = geometry.points(k)
            if phantom_transform is not None:
                pts = transform_points(pts, phantom_transform)
            hu = table[phantom.labels(pts)] + bank[k % _NOISE_BANK]
            yield _to_stored(hu)
        return

    pos0 = geometry.rounded_position(0)
    dr, dc = geometry.pixel_spacing
    x0, y0 = pos0[0], pos0[1]
    xs = (x0 + np.arange(geometry.columns) * dc).astype(np.float32)
    ys = (y0 + np.arange(geometry.rows) * dr).astype(np.float32)
    base = table[phantom.background_labels(xs[None, :], ys[:, None])]
    stored_bank = np.stack([_to_stored(base + bank[i]) for i in range(_NOISE_BANK)])
    below_bank = stored_bank
    if phantom.lung_base_z is not None:
        below = table[phantom.background_labels(xs[None, :], ys[:, None], below_lungs=True)]
        below_bank = np.stack([_to_stored(below + bank[i]) for i in range(_NOISE_BANK)])
    for k in range(geometry.slices):
        z = geometry.rounded_position(k)[2]
        noise = bank[k % _NOISE_BANK]
        under = phantom.lung_base_z is not None and z < phantom.lung_base_z
        img = (below_bank if under else stored_bank)[k % _NOISE_BANK].copy()
        for s in phantom.spheres:
            cx, cy, cz = s.centre
            rr2 = s.radius**2 - (z - cz) ** 2
            if rr2 <= 0:
                continue
            rr = math.sqrt(rr2)
            c0 = max(0, math.ceil((cx - rr - x0) / dc))
            c1 = min(geometry.columns - 1, math.floor((cx + rr - x0) / dc))
            r0 = max(0, math.ceil((cy - rr - y0) / dr))
            r1 = min(geometry.rows - 1, math.floor((cy + rr - y0) / dr))
            if c1 < c0 or r1 < r0:
                continue
            mask = (xs[None, c0 : c1 + 1] - cx) ** 2 + (ys[r0 : r1 + 1, None] - cy) ** 2 <= rr2
            box = img[r0 : r1 + 1, c0 : c1 + 1]
            box[mask] = _to_stored(s.hu + noise[r0 : r1 + 1, c0 : c1 + 1][mask])
        yield img


def _to_stored(hu: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
    return np.clip(np.rint(hu - CT_INTERCEPT), -1024 - CT_INTERCEPT, 4095).astype(np.int16)


def mr_slices(
    geometry: StackGeometry, phantom: Phantom, *, seed: int = 0, noise_sigma: float = 20.0
) -> Iterator[npt.NDArray[np.uint16]]:
    """12-bit MR magnitude values of each slice: T1-like tissue signal, a smooth
    receive-coil shading and Rician noise (magnitude of complex Gaussian noise)."""
    table = phantom.lookup("MR")
    rng = np.random.default_rng(seed)
    for k in range(geometry.slices):
        pts = geometry.points(k)
        signal = table[phantom.labels(pts)]
        shading = 1.0 + 0.15 * np.clip(-pts[..., 1] / 200.0, -1.0, 1.0)  # brighter anteriorly
        real = signal * shading + rng.standard_normal(signal.shape, dtype=np.float32) * noise_sigma
        imag = rng.standard_normal(signal.shape, dtype=np.float32) * noise_sigma
        yield np.clip(np.rint(np.hypot(real, imag)), 0, 4095).astype(np.uint16)


# ---------------------------------------------------------------------------- modules
def _new_dataset(study: Study, sop_class: str, sop_uid: str) -> Dataset:
    """SOP Common, Patient and General Study modules, with file meta for Explicit VR LE."""
    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    p = study.patient
    charset = p.specific_character_set
    if charset is not None:
        ds.SpecificCharacterSet = charset
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceCreationDate = study.date
    ds.InstanceCreationTime = study.time
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study.date
    ds.SeriesDate = study.date
    ds.ContentDate = study.date
    ds.StudyTime = study.time
    ds.SeriesTime = study.time
    ds.ContentTime = study.time
    ds.AccessionNumber = study.accession
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = "Hilum Test Clinic"
    ds.ReferringPhysicianName = study.referring_physician
    ds.StationName = "HILUMGEN"
    ds.StudyDescription = study.description
    ds.ManufacturerModelName = MODEL
    ds.PatientName = p.name
    ds.PatientID = p.patient_id
    ds.PatientBirthDate = p.birth_date
    ds.PatientSex = p.sex
    ds.BodyPartExamined = study.body_part
    ds.DeviceSerialNumber = "0001"
    ds.SoftwareVersions = SOFTWARE_VERSION
    ds.StudyInstanceUID = study.uid
    ds.StudyID = study.study_id
    ds.FrameOfReferenceUID = study.frame_of_reference_uid or deterministic_uid(study.uid, "frame-of-reference")
    ds.PositionReferenceIndicator = ""
    return ds


def _series(ds: Dataset, modality: str, series_uid: str, number: int, description: str) -> None:
    ds.Modality = modality
    ds.SeriesDescription = description
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.PatientPosition = "HFS"


def _plane(ds: Dataset, g: StackGeometry, k: int, thickness: float) -> None:
    """Image Plane module (PS3.3 C.7.6.2)."""
    ds.SliceThickness = _ds(thickness)
    ds.SpacingBetweenSlices = _ds(g.spacing)
    ds.ImagePositionPatient = _ds_list(g.position(k))
    ds.ImageOrientationPatient = _ds_list(g.orientation)
    ds.SliceLocation = _ds(float(np.dot(g.rounded_position(k), g.normal)))
    ds.PixelSpacing = _ds_list(g.pixel_spacing)


def _pixels(ds: Dataset, arr: npt.NDArray[np.integer], bits_stored: int) -> None:
    """Image Pixel module (PS3.3 C.7.6.3) for one grayscale frame or a stack of frames."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(arr.shape[-2]), int(arr.shape[-1])
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    ds.PixelData = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"


CT_WINDOWS = ((40.0, 400.0, "SOFT TISSUE"), (-600.0, 1500.0, "LUNG"))
MR_WINDOW = (600.0, 1400.0, "T1")


def _windows(ds: Dataset, windows: Sequence[tuple[float, float, str]]) -> None:
    ds.WindowCenter = [_ds(c) for c, _, _ in windows]
    ds.WindowWidth = [_ds(w) for _, w, _ in windows]
    ds.WindowCenterWidthExplanation = [e for _, _, e in windows]


# ---------------------------------------------------------------------------- CT
def iter_ct_series(
    study: Study,
    *,
    rows: int = 512,
    columns: int = 512,
    slices: int = 60,
    fov: float = 360.0,
    slice_thickness: float = 2.5,
    spacing_between_slices: float | None = None,
    orientation: Sequence[float] = AXIAL,
    centre: Sequence[float] = (0.0, 0.0, 0.0),
    descending: bool = False,
    series_number: int = 1,
    series_description: str | None = None,
    phantom: Phantom | None = None,
    seed: int = 0,
    noise_sigma: float = 10.0,
    series_uid: str | None = None,
    phantom_transform: npt.ArrayLike | None = None,
) -> Iterator[Dataset]:
    """Yield the CT Image Storage instances (PS3.3 A.3) of one series, in instance order.

    Stored values are int16 with Rescale Slope 1 / Intercept -1024, so
    HU = stored - 1024.  ``phantom_transform`` (4x4, series patient coordinates
    to phantom coordinates) samples a moved phantom (see :func:`ct_slices`).  The stack is centred on ``centre`` (patient mm); by
    default axial slices ascend in z (feet to head); ``descending=True`` gives
    the head-first order of most scanners.  A generator, so thousands of
    512x512 slices can be written without holding them in memory.
    """
    phantom = phantom or Phantom()
    spacing = spacing_between_slices or slice_thickness
    g = stack_geometry(
        rows=rows,
        columns=columns,
        slices=slices,
        fov=fov,
        spacing=spacing,
        orientation=orientation,
        centre=centre,
        descending=descending,
    )
    series_uid = series_uid or deterministic_uid(study.uid, "series", series_number)
    axial = np.allclose(g.rounded_orientation(), AXIAL)
    if series_description is None:
        series_description = f"{'Axial' if axial else 'Oblique'} {slice_thickness:g} mm"
    slices_ = ct_slices(g, phantom, seed=seed, noise_sigma=noise_sigma, phantom_transform=phantom_transform)
    for k, arr in enumerate(slices_):
        sop_uid = deterministic_uid(series_uid, "instance", k + 1)
        ds = _new_dataset(study, CTImageStorage, sop_uid)
        if not axial:
            ds.ImageType = ["DERIVED", "SECONDARY", "REFORMATTED"]
        _series(ds, "CT", series_uid, series_number, series_description)
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.KVP = "120"
        ds.DataCollectionDiameter = _ds(500.0)
        ds.ReconstructionDiameter = _ds(fov)
        ds.ConvolutionKernel = "STANDARD"
        ds.XRayTubeCurrent = 200
        ds.ExposureTime = 500
        _plane(ds, g, k, slice_thickness)
        _pixels(ds, arr, 16)
        _windows(ds, CT_WINDOWS)
        ds.RescaleIntercept = str(CT_INTERCEPT)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        yield ds


def generate_ct_series(study: Study, **kwargs: object) -> list[Dataset]:
    """The instances of :func:`iter_ct_series` as a list (same keyword arguments)."""
    return list(iter_ct_series(study, **kwargs))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- MR
def generate_mr_series(
    study: Study,
    *,
    rows: int = 256,
    columns: int = 256,
    slices: int = 20,
    fov: float = 360.0,
    slice_thickness: float = 5.0,
    spacing_between_slices: float = 6.0,
    orientation: Sequence[float] = AXIAL,
    centre: Sequence[float] = (0.0, 0.0, 0.0),
    descending: bool = False,
    series_number: int = 1,
    series_description: str = "T1 SE axial",
    phantom: Phantom | None = None,
    seed: int = 0,
    series_uid: str | None = None,
) -> list[Dataset]:
    """The MR Image Storage instances (PS3.3 A.4) of one 2D spin-echo series.

    12-bit unsigned magnitude images.  Slices have a gap (thickness 5 mm,
    centre-to-centre spacing 6 mm by default); any ``orientation`` works, e.g.
    :data:`OBLIQUE`, and Image Position (Patient) then steps along the true
    normal of Image Orientation (Patient).
    """
    phantom = phantom or Phantom()
    g = stack_geometry(
        rows=rows,
        columns=columns,
        slices=slices,
        fov=fov,
        spacing=spacing_between_slices,
        orientation=orientation,
        centre=centre,
        descending=descending,
    )
    series_uid = series_uid or deterministic_uid(study.uid, "series", series_number)
    out = []
    for k, arr in enumerate(mr_slices(g, phantom, seed=seed)):
        sop_uid = deterministic_uid(series_uid, "instance", k + 1)
        ds = _new_dataset(study, MRImageStorage, sop_uid)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        _series(ds, "MR", series_uid, series_number, series_description)
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.SequenceName = "se2d1"
        ds.RepetitionTime = _ds(500.0)
        ds.EchoTime = _ds(12.0)
        ds.EchoTrainLength = 1
        ds.NumberOfAverages = _ds(2.0)
        ds.ImagingFrequency = _ds(63.87)
        ds.ImagedNucleus = "1H"
        ds.MagneticFieldStrength = _ds(1.5)
        ds.PixelBandwidth = _ds(130.0)
        ds.FlipAngle = _ds(90.0)
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        _plane(ds, g, k, slice_thickness)
        _pixels(ds, arr, 12)
        _windows(ds, [MR_WINDOW])
        out.append(ds)
    return out


# ---------------------------------------------------------------------------- Enhanced CT
def _item(**attrs: object) -> Dataset:
    item = Dataset()
    for key, value in attrs.items():
        setattr(item, key, value)
    return item


def generate_enhanced_ct(
    study: Study,
    *,
    rows: int = 256,
    columns: int = 256,
    frames: int = 40,
    fov: float = 360.0,
    slice_thickness: float = 2.5,
    spacing_between_slices: float | None = None,
    centre: Sequence[float] = (0.0, 0.0, 0.0),
    series_number: int = 1,
    series_description: str = "Enhanced CT volume",
    phantom: Phantom | None = None,
    seed: int = 0,
) -> Dataset:
    """One Enhanced CT Image Storage instance (PS3.3 A.38) holding an axial volume.

    Geometry lives in the functional groups (PS3.3 C.7.6.16): Pixel Measures,
    Plane Orientation, Pixel Value Transformation and Frame VOI LUT are shared;
    Plane Position and Frame Content (stack ID / in-stack position, the two
    dimensions of the Multi-frame Dimension module, C.7.6.17) are per frame.
    Image Type is DERIVED, so the acquisition-detail functional groups that
    ORIGINAL frames require are not needed.
    """
    phantom = phantom or Phantom()
    spacing = spacing_between_slices or slice_thickness
    g = stack_geometry(rows=rows, columns=columns, slices=frames, fov=fov, spacing=spacing, centre=centre)
    series_uid = deterministic_uid(study.uid, "series", series_number)
    sop_uid = deterministic_uid(series_uid, "instance", 1)
    volume = np.stack(list(ct_slices(g, phantom, seed=seed)))

    ds = _new_dataset(study, EnhancedCTImageStorage, sop_uid)
    ds.ImageType = ["DERIVED", "PRIMARY", "AXIAL", "NONE"]
    _series(ds, "CT", series_uid, series_number, series_description)
    ds.InstanceNumber = 1
    ds.AcquisitionNumber = 1
    ds.AcquisitionDateTime = study.date + study.time
    ds.AcquisitionDuration = 10.0
    ds.ContentQualification = "PRODUCT"
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PresentationLUTShape = "IDENTITY"
    ds.AcquisitionContextSequence = DicomSequence([])
    ds.NumberOfFrames = frames

    dim_uid = deterministic_uid(series_uid, "dimension-organization")
    ds.DimensionOrganizationSequence = DicomSequence([_item(DimensionOrganizationUID=dim_uid)])
    ds.DimensionOrganizationType = "3D"
    ds.DimensionIndexSequence = DicomSequence(
        [
            _item(
                DimensionOrganizationUID=dim_uid,
                DimensionIndexPointer=0x00209056,  # Stack ID
                FunctionalGroupPointer=0x00209111,  # Frame Content Sequence
                DimensionDescriptionLabel="Stack ID",
            ),
            _item(
                DimensionOrganizationUID=dim_uid,
                DimensionIndexPointer=0x00209057,  # In-Stack Position Number
                FunctionalGroupPointer=0x00209111,
                DimensionDescriptionLabel="In-Stack Position Number",
            ),
        ]
    )
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence(
        [
            _item(
                PixelSpacing=_ds_list(g.pixel_spacing),
                SliceThickness=_ds(slice_thickness),
                SpacingBetweenSlices=_ds(spacing),
            )
        ]
    )
    shared.PlaneOrientationSequence = DicomSequence([_item(ImageOrientationPatient=_ds_list(g.orientation))])
    shared.PixelValueTransformationSequence = DicomSequence(
        [_item(RescaleIntercept=str(CT_INTERCEPT), RescaleSlope="1", RescaleType="HU")]
    )
    shared.FrameVOILUTSequence = DicomSequence(
        [
            _item(
                WindowCenter=[_ds(c) for c, _, _ in CT_WINDOWS],
                WindowWidth=[_ds(w) for _, w, _ in CT_WINDOWS],
                WindowCenterWidthExplanation=[e for _, _, e in CT_WINDOWS],
            )
        ]
    )
    shared.CTImageFrameTypeSequence = DicomSequence(
        [
            _item(
                FrameType=["DERIVED", "PRIMARY", "AXIAL", "NONE"],
                PixelPresentation="MONOCHROME",
                VolumetricProperties="VOLUME",
                VolumeBasedCalculationTechnique="NONE",
            )
        ]
    )
    chest = _item(CodeValue="43799004", CodingSchemeDesignator="SCT", CodeMeaning="Chest")
    shared.FrameAnatomySequence = DicomSequence(
        [_item(AnatomicRegionSequence=DicomSequence([chest]), FrameLaterality="U")]
    )
    shared.IrradiationEventIdentificationSequence = DicomSequence(
        [_item(IrradiationEventUID=deterministic_uid(series_uid, "irradiation-event"))]
    )
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for k in range(frames):
        frame = Dataset()
        frame.FrameContentSequence = DicomSequence(
            [
                _item(
                    FrameAcquisitionDateTime=study.date + study.time,
                    FrameReferenceDateTime=study.date + study.time,
                    FrameAcquisitionDuration=250.0,
                    StackID="1",
                    InStackPositionNumber=k + 1,
                    DimensionIndexValues=[1, k + 1],
                )
            ]
        )
        frame.PlanePositionSequence = DicomSequence([_item(ImagePositionPatient=_ds_list(g.position(k)))])
        per_frame.append(frame)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    _pixels(ds, volume, 16)
    return ds


# ---------------------------------------------------------------------------- Secondary Capture
def to_secondary_capture(
    source: Dataset,
    *,
    series_uid: str,
    instance_number: int,
    series_number: int,
    series_description: str,
    window: tuple[float, float] = (40.0, 400.0),
) -> Dataset:
    """An 8-bit MONOCHROME2 Secondary Capture (PS3.3 A.8.1) of a CT or MR image,
    windowed to ``(centre, width)`` with the linear VOI function of PS3.3
    C.11.2.1.2.1.  8-bit images are what JPEG Baseline (Process 1) can carry."""
    arr = source.pixel_array.astype(np.float64)
    arr = arr * float(source.get("RescaleSlope", 1)) + float(source.get("RescaleIntercept", 0))
    c, w = window
    y = ((arr - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    img = np.clip(np.rint(y), 0, 255).astype(np.uint8)

    sop_uid = deterministic_uid(series_uid, "instance", instance_number)
    study = Study(
        patient=_patient_of(source),
        uid=source.StudyInstanceUID,
        date=source.StudyDate,
        time=source.StudyTime,
        accession=source.AccessionNumber,
        description=source.StudyDescription,
        study_id=source.StudyID,
        body_part=source.get("BodyPartExamined", ""),
        referring_physician=str(source.ReferringPhysicianName),
        frame_of_reference_uid=source.get("FrameOfReferenceUID", ""),
    )
    ds = _new_dataset(study, SecondaryCaptureImageStorage, sop_uid)
    for keyword in ("FrameOfReferenceUID", "PositionReferenceIndicator"):
        del ds[keyword]
    ds.ImageType = ["DERIVED", "SECONDARY"]
    _series(ds, "OT", series_uid, series_number, series_description)
    del ds["PatientPosition"]
    ds.ConversionType = "WSD"
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ["L", "P"]
    ds.DerivationDescription = f"Windowed C={c:g} W={w:g} to 8 bit from {source.SOPInstanceUID}"
    ds.PixelSpacing = source.get("PixelSpacing", ["1", "1"])
    _pixels(ds, img, 8)
    return ds


def _patient_of(ds: Dataset) -> Patient:
    """The :class:`Patient` of an existing dataset (its name, IDs and character set)."""
    cs = ds.get("SpecificCharacterSet")
    if cs is None:
        charset: tuple[str, ...] = ()
    elif isinstance(cs, str):
        charset = (cs,)
    else:
        charset = tuple(cs)
    return Patient(str(ds.PatientName), ds.PatientID, ds.PatientBirthDate, ds.PatientSex, charset)
