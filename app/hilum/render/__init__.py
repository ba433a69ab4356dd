"""Hilum render layer (see ../shared/DESIGN.md)."""
