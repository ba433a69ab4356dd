"""Hilum plugin ``hilum-lung-seg``: lung fields on axial CT slices by a small trained CNN.

Hilum finds this package through its entry point and reads ``hilum-plugin.toml`` beside this
file without importing it; the host imports :mod:`hilum_lung_seg.post` only when the plugin
runs.  ``synth`` (training data) and ``net`` (the numpy network) serve ``train.py`` and tests.
"""
