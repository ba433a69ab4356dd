"""Hilum plugin ``hilum-body-masks``: body, bone and lung masks on CT by thresholds and morphology.

A classical algorithm packaged like a trained model: ``build.py`` writes it as an ONNX graph
(``model.onnx``); Hilum finds this package through its entry point and reads
``hilum-plugin.toml`` without importing it.  :mod:`hilum_body_masks.post` (volumes of each mask)
is imported only when the plugin runs.
"""
