"""Hilum dicom layer (see ../shared/DESIGN.md)."""
