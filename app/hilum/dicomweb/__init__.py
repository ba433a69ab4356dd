"""Hilum dicomweb layer (see ../shared/DESIGN.md)."""
