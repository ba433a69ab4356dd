"""Synthetic DICOM studies for tests, demos and benchmarks (pure: pydicom, numpy, Pillow).

A chest phantom with known spheres (:mod:`.phantom`) is sampled into CT, MR,
Enhanced CT and Secondary Capture instances with true geometry
(:mod:`.series`), for patients whose names need ISO_IR 100, ISO_IR 192 and
ISO 2022 IR 87 (:mod:`.people`), transcoded to the common transfer syntaxes
(:mod:`.syntaxes`) and written as whole demo or benchmark sets (:mod:`.demo`).
UIDs and pixels are deterministic for a given seed.
"""

from hilum.dicom.generator.demo import (
    PRIOR_PHANTOM,
    demo_sizes,
    instance_path,
    write_codec_study,
    write_ct_set,
    write_demo,
)
from hilum.dicom.generator.people import (
    DOE,
    IVANOV,
    MUELLER,
    PAPADOPOULOU,
    PATIENTS,
    YAMADA,
    Patient,
    Study,
    deterministic_uid,
    make_study,
)
from hilum.dicom.generator.phantom import DEFAULT_SPHERES, TISSUE_HU, TISSUE_MR, Phantom, Sphere
from hilum.dicom.generator.series import (
    AXIAL,
    CORONAL,
    CT_INTERCEPT,
    OBLIQUE,
    SAGITTAL,
    StackGeometry,
    ct_slices,
    generate_ct_series,
    generate_enhanced_ct,
    generate_mr_series,
    iter_ct_series,
    rotate_orientation,
    stack_geometry,
    to_secondary_capture,
)
from hilum.dicom.generator.syntaxes import LOSSLESS, NATIVE, SYNTAXES, resolve_syntax, transcode, write_dataset

__all__ = [
    "AXIAL",
    "CORONAL",
    "CT_INTERCEPT",
    "DEFAULT_SPHERES",
    "DOE",
    "IVANOV",
    "LOSSLESS",
    "MUELLER",
    "NATIVE",
    "OBLIQUE",
    "PAPADOPOULOU",
    "PATIENTS",
    "PRIOR_PHANTOM",
    "SAGITTAL",
    "SYNTAXES",
    "TISSUE_HU",
    "TISSUE_MR",
    "YAMADA",
    "Patient",
    "Phantom",
    "Sphere",
    "StackGeometry",
    "Study",
    "ct_slices",
    "demo_sizes",
    "deterministic_uid",
    "generate_ct_series",
    "generate_enhanced_ct",
    "generate_mr_series",
    "instance_path",
    "iter_ct_series",
    "make_study",
    "resolve_syntax",
    "rotate_orientation",
    "stack_geometry",
    "to_secondary_capture",
    "transcode",
    "write_codec_study",
    "write_ct_set",
    "write_dataset",
    "write_demo",
]
