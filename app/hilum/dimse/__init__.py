"""Hilum dimse layer (see ../shared/DESIGN.md)."""
