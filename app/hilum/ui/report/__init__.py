"""Reporting in the workstation (issue 20b): the report editor docked beside the viewer.

- :mod:`hilum.ui.report.templates` — report templates (TOML, shipped + the user's own), headless;
- :mod:`hilum.ui.report.spell` — spell-checking (pyspellchecker, English and French) and its highlighter;
- :mod:`hilum.ui.report.inserts` — insert-from-study text (measurements, key images, comparison, AI), headless;
- :mod:`hilum.ui.report.editor` — :class:`~hilum.ui.report.editor.ReportEditor`, the sign dialog;
- :mod:`hilum.ui.report.dock` — the Report dock and menu of the main window, the worklist's "Report".
"""
