"""Hilum hl7 layer (see ../shared/DESIGN.md)."""
