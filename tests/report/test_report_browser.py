"""Open generated reports in headless Chromium: every figure must render, with no JS errors.

How errors are detected: Chromium run with ``--enable-logging=stderr --v=0`` writes each console
message to stderr as a ``...:INFO:CONSOLE:<line>] "<message>", source: ...`` line. Current builds
log every level as INFO, so ``console.error`` cannot be told apart by level; only uncaught
exceptions and rejections are recognisable (their message starts with ``Uncaught``). The test
therefore opens an *instrumented copy* of the report whose first head script prefixes every
``console.error`` call, and every failed resource load, with ``[moesim-console-error]``. A line
is an error if it is a CONSOLE line with ``Uncaught``, that marker, or the level ``:ERROR:CONSOLE``
(older builds). Remote host names resolve to nothing, so a page that needs the network fails.
``test_detector_catches`` proves the detector on throwaway pages with deliberate errors.
"""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fake_result import make_result

from moesim.report import render_html
from moesim.report.figures import build_figures
from moesim.report.moe_figures import MOE_PANELS

_FOUND = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM = _FOUND or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="chromium not installed; .ci/run installs it (apt-get install chromium)",
    ),
]

MARKER = "[moesim-console-error]"
CONSOLE_HOOK = f"""<script>
(function () {{
  var original = console.error.bind(console);
  console.error = function () {{
    original.apply(null, ["{MARKER}"].concat(Array.prototype.slice.call(arguments)));
  }};
  window.addEventListener("error", function (e) {{
    var t = e.target;
    if (t && t !== window && (t.src || t.href)) {{
      console.error("failed to load", t.src || t.href);
    }}
  }}, true);
}})();
</script>"""


def instrument(page: str) -> str:
    """Insert the console hook as the first element of <head>, before any other script."""
    head = page.index("<head>") + len("<head>")
    return page[:head] + CONSOLE_HOOK + page[head:]


def run_chromium(page: Path, workdir: Path) -> tuple[str, str]:
    """Load ``page`` headless, let timers run, and return (dumped DOM, stderr)."""
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
        "--v=0", "--virtual-time-budget=10000", "--no-first-run", "--disable-extensions",
        f"--user-data-dir={workdir / 'profile'}", "--host-resolver-rules=MAP * ~NOTFOUND",
        "--dump-dom", page.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, proc.stderr


def console_errors(stderr: str) -> list[str]:
    """The stderr lines that report a console error or an uncaught exception."""
    return [line for line in stderr.splitlines()
            if ":ERROR:CONSOLE" in line
            or ("CONSOLE" in line and ("Uncaught" in line or MARKER in line))]


class _FigureScan(HTMLParser):
    """Records, for each ``div.figure``, whether plotly drew a plot-container and a main-svg."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, set[str]] = {}
        self._current: str | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        if self._current is None:
            if tag == "div" and "figure" in classes and a.get("data-figure"):
                self._current, self._depth = str(a["data-figure"]), 1
                self.figures[self._current] = set()
            return
        if tag == "div":
            self._depth += 1
        self.figures[self._current] |= classes & {"plot-container", "main-svg"}

    def handle_endtag(self, tag: str) -> None:
        if self._current is not None and tag == "div":
            self._depth -= 1
            if self._depth == 0:
                self._current = None


def rendered_figures(dom: str) -> dict[str, set[str]]:
    """Map each figure name in the dumped DOM to the plotly classes found inside it."""
    scan = _FigureScan()
    scan.feed(dom)
    return scan.figures


BROKEN_PAGES = {
    "uncaught": "<script>undefinedFunction();</script>",
    "console_error": "<script>console.error('explicit console error');</script>",
    "rejection": "<script>Promise.reject(new Error('rejected promise'));</script>",
    "missing_script": "<script src='does-not-exist.js'></script>",
    "remote_script": "<script src='https://cdn.example.invalid/lib.js'></script>",
}


@pytest.mark.parametrize("kind", sorted(BROKEN_PAGES))
def test_detector_catches(kind: str, tmp_path: Path) -> None:
    """A throwaway page with a deliberate error is flagged by ``console_errors``."""
    page = tmp_path / f"{kind}.html"
    page.write_text(instrument(f"<html><head></head><body>{BROKEN_PAGES[kind]}</body></html>"))
    _, stderr = run_chromium(page, tmp_path)
    assert console_errors(stderr), stderr[-3000:]


def test_detector_quiet_on_clean_page(tmp_path: Path) -> None:
    """A page that only logs normally produces no detected errors."""
    page = tmp_path / "clean.html"
    page.write_text(instrument("<html><head></head><body><script>console.log('fine');"
                               "console.warn('just a warning');</script></body></html>"))
    _, stderr = run_chromium(page, tmp_path)
    assert console_errors(stderr) == []
    assert "fine" in stderr  # console logging reached stderr, so the check above is meaningful


@pytest.mark.parametrize("moe", [True, False], ids=["moe", "dense"])
def test_report_renders_in_browser(moe: bool, tmp_path: Path) -> None:
    """Every figure div holds a drawn plotly plot and the page logs no errors.

    The MoE result has every MoE record (re-plans, OOM passes, calibration bands), so every
    panel of ``all_panels`` is drawn.
    """
    result = make_result(seed=3, moe=moe, oom_passes=4 if moe else 0, calibrated=True)
    page = tmp_path / "report.html"
    page.write_text(instrument(render_html(result)), encoding="utf-8")
    dom, stderr = run_chromium(page, tmp_path)
    assert console_errors(stderr) == []
    found = rendered_figures(dom)
    assert list(found) == list(build_figures(result))
    assert ({name for name, _ in MOE_PANELS} <= set(found)) == moe
    missing = {name: classes for name, classes in found.items()
               if classes != {"plot-container", "main-svg"}}
    assert not missing, f"figures not rendered: {missing}"


REAL_RUNS = {
    "olmoe-1b-7b": ["model=olmoe-1b-7b"],
    "llama-3-70b": ["model=llama-3-70b", "deployment.replicas=1", "deployment.gpus_per_replica=8",
                    "deployment.attention_tp=8", "deployment.ep=8"],
    # EPLB replicas, re-planned every 2 s so that migrations are recorded
    "olmoe-eplb-replan": ["model=olmoe-1b-7b", "placement.kind=eplb",
                          "placement.redundant_experts=8", "placement.replan_interval_s=2",
                          "placement.plan_from=uniform"],
}


@pytest.mark.parametrize("case", sorted(REAL_RUNS))
def test_report_of_a_real_run_renders_in_browser(case: str, tmp_path: Path) -> None:
    """End to end: `moesim run` output opened in Chromium (MoE and dense models)."""
    from moesim.cli import main

    sets = ["workload.duration_s=8", *REAL_RUNS[case]]
    args = ["run", "default", "-o", str(tmp_path / "out"), "-q"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    page = tmp_path / "report.html"
    page.write_text(instrument(html), encoding="utf-8")
    dom, stderr = run_chromium(page, tmp_path)
    assert console_errors(stderr) == []
    found = rendered_figures(dom)
    assert {"latency_cdf", "throughput", "kv_occupancy", "batch_size"} <= set(found)
    moe = case.startswith("olmoe")
    assert ("expert_load" in found) == moe
    assert ({"imbalance_before_after", "placement_map", "rank_load_timeline"} <= set(found)) == moe
    assert ("migrations" in found) == (case == "olmoe-eplb-replan")
    assert all(c == {"plot-container", "main-svg"} for c in found.values()), found


def test_network_panels_render_for_a_flow_run(tmp_path: Path) -> None:
    """A flow-model run shows link utilisation by tier and the busiest links."""
    from moesim.config.load import load_scenario
    from moesim.engine.run import run

    result = run(load_scenario("default", ["workload.duration_s=6", "hardware.network.model=flow"]))
    page = tmp_path / "report.html"
    page.write_text(instrument(render_html(result)), encoding="utf-8")
    dom, stderr = run_chromium(page, tmp_path)
    assert console_errors(stderr) == []
    found = rendered_figures(dom)
    assert {"link_utilisation", "busiest_links"} <= set(found)
    assert found["link_utilisation"] == {"plot-container", "main-svg"}
