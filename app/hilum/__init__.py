"""Hilum: a DICOM workstation with an integrated mini-PACS."""

__version__ = "0.2.0"
