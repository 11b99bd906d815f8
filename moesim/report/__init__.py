"""Self-contained HTML reports (plotly.js inlined, opens offline) built from a ``RunResult``."""

from __future__ import annotations

from moesim.report.html import render_html, write_html

__all__ = ["render_html", "write_html"]
