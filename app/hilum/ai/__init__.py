"""Hilum ai layer (see ../shared/DESIGN.md)."""
