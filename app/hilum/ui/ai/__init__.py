"""AI plugins in the workstation (issue 19c): the AI menu, runs with progress and cancel, the
results on the viewer (segment overlay, heat map, findings dock) and the plugin manager."""

from __future__ import annotations

from hilum.ui.ai.controller import SHORTCUTS, AIController, install_ai

__all__ = ["SHORTCUTS", "AIController", "install_ai"]
