"""OHIF in a real headless Chromium over the same throttled link as bench/telerad/run.py.

    python bench/telerad/ohif.py [--slices 600] [--profiles slow,fast] [--data DIR]
                                 [--with plain,hilum] [--full-timeout 900] [--json OUT]

The same remote node (``hilum serve``, anonymous read: no sign-in to time) and
the same application-level throttling proxy as :mod:`run` — here in front of the
node's whole web port, so the browser gets the viewer's files and every
``/dicom-web`` request through the link.  Debian's ``chromium`` +
``chromium-driver`` through Selenium, as tests/test_web_viewer.py drives it.

Per profile: a fresh browser (empty cache) loads ``/viewer/`` once through the
link (OHIF's files cached: a reader who has used the viewer before); then
navigates to the study's viewer URL.  Measured from the navigation start
(``performance.timeOrigin``):

* **first image**: a script installed before the page (CDP
  ``Page.addScriptToEvaluateOnNewDocument``) polls the viewport canvas
  (``canvas.cornerstone-canvas``, a 2D canvas cornerstone copies its render
  into) every animation frame for a non-black pixel (a sparse grid, channel
  value > 16) and records the first time
  (``metadata_s``: the series metadata answer in; ``first_frame_s``: the
  first slice's pixels in; both from resource timing);
* **all slices loaded**: the same script records every resource timing entry
  (buffer enlarged) of ``/dicom-web``; a slice is loaded when its
  ``.../instances/<sop>/frames/...`` (or whole-instance) request has
  completed; the time is the ``responseEnd`` of the last of the series'
  ``--slices`` distinct instances.  If fewer arrive, the network idle (no new
  ``/dicom-web`` entry for 5 s) is reported instead, with the count.

``--with plain,hilum`` also times run.py's plain WADO-RS download and Hilum's
progressive driver in the same run on fresh proxies (ratios: OHIF's time / theirs);
``--with ''`` times OHIF only.  Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import PROFILES, Node, ThrottlingProxy, ensure_data, plain_wado, progressive_driver  # noqa: E402

from hilum.dicomweb.viewer import study_viewer_path  # noqa: E402

PROBE = r"""
(() => {
  const H = (window.__hilum = {first: null, entries: [], err: null});
  try { performance.setResourceTimingBufferSize(100000); } catch (e) {}
  const take = (list) => { for (const e of list) if (e.name.includes('/dicom-web')) H.entries.push([e.name, e.startTime, e.responseEnd]); };
  try { new PerformanceObserver((l) => take(l.getEntries())).observe({type: 'resource', buffered: true}); }
  catch (e) { H.err = String(e); }
  const poll = () => {
    if (H.first === null) {
      for (const c of document.querySelectorAll('canvas.cornerstone-canvas')) {
        const w = c.width, h = c.height;
        if (!w || !h) continue;
        let ctx = null;
        try { ctx = c.getContext('2d', {willReadFrequently: true}); } catch (e) { H.err = String(e); }
        if (!ctx) continue;
        const d = ctx.getImageData(0, 0, w, h).data;
        const sx = Math.max(1, Math.floor(w / 64)), sy = Math.max(1, Math.floor(h / 64));
        let lit = 0;
        for (let y = 0; y < h && lit < 8; y += sy)
          for (let x = 0; x < w; x += sx) {
            const i = 4 * (y * w + x);
            if (d[i] > 16 || d[i + 1] > 16 || d[i + 2] > 16) { if (++lit >= 8) break; }
          }
        if (lit >= 8) { H.first = performance.now(); break; }
      }
    }
    if (H.first === null) requestAnimationFrame(poll);
  };
  requestAnimationFrame(poll);
})();
"""


def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_bin):
        raise SystemExit("needs Debian's chromium + chromium-driver")
    opts = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,900",
        "--force-device-scale-factor=1",
        "--enable-unsafe-swiftshader",
    ):
        opts.add_argument(arg)
    opts.binary_location = chromium
    d = webdriver.Chrome(options=opts, service=Service(driver_bin))
    d.set_page_load_timeout(300)
    d.set_script_timeout(60)
    return d


def _sop(url: str) -> str | None:
    """The SOP Instance UID of a frame or instance retrieval, else None."""
    path = url.split("?", 1)[0]
    if "/instances/" not in path:
        return None
    rest = path.split("/instances/", 1)[1].split("/")
    if len(rest) == 1 or (len(rest) >= 2 and rest[1] in ("frames", "rendered")):
        return rest[0] or None
    return None


def ohif_run(base: str, study: str, slices: int, full_timeout: float, proxy: ThrottlingProxy) -> dict[str, Any]:
    d = browser()
    try:
        # OHIF's own files through the link once (cached), as for a reader who has opened the viewer before
        t = time.perf_counter()
        d.get(base + "/viewer/")
        end = time.monotonic() + 120
        while time.monotonic() < end and "Hilum" not in d.find_element("tag name", "body").text + d.title:
            if d.find_elements("css selector", "table, [data-cy='study-list-results']"):
                break
            time.sleep(0.2)
        warm = time.perf_counter() - t
        d.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": PROBE})
        warm_bytes = proxy.link.bytes["down"]
        d.get(base + study_viewer_path(study))
        first = None
        end = time.monotonic() + full_timeout
        last_n, last_change = -1, time.monotonic()
        state: dict[str, Any] = {}
        cut = True
        while time.monotonic() < end:
            state = d.execute_script(
                "const H = window.__hilum || {}; return {first: H.first ?? null, err: H.err ?? null,"
                " entries: (H.entries || []).length};"
            )
            if first is None and state.get("first") is not None:
                first = float(state["first"]) / 1e3
                print(f"    first image drawn at {first:.2f} s", flush=True)
            n = int(state.get("entries") or 0)
            if n != last_n:
                last_n, last_change = n, time.monotonic()
            if first is not None and n and time.monotonic() - last_change > 5.0:
                cut = False
                break
            sops = d.execute_script(
                "return new Set((window.__hilum.entries || []).map(e => e[0].split('?')[0]"
                ".split('/instances/')[1]?.split('/')[0]).filter(Boolean)).size;"
            )
            if int(sops or 0) >= slices:
                cut = False
                break
            time.sleep(0.5)
        entries = d.execute_script("return (window.__hilum || {}).entries || [];")
        Path(tempfile.gettempdir(), "ohif-telerad-last.png").write_bytes(d.get_screenshot_as_png())
    finally:
        d.quit()
    done: dict[str, float] = {}
    for url, _start, resp_end in entries:
        sop = _sop(url)
        if sop is not None:
            done[sop] = max(done.get(sop, 0.0), float(resp_end) / 1e3)
    last_dicomweb = max((float(e[2]) for e in entries), default=0.0) / 1e3
    frames_like = [u for u, _s, _e in entries if "/frames/" in u]
    meta_ends = [float(e[2]) / 1e3 for e in entries if e[0].split("?", 1)[0].endswith("/metadata")]
    out: dict[str, Any] = {
        "first_image_s": first if first is not None else float("nan"),
        "metadata_s": max(meta_ends, default=float("nan")),
        "first_frame_s": min(done.values(), default=float("nan")),
        "slices_loaded": len(done),
        "requests": len(entries),
        "frame_requests": len(frames_like),
        "viewer_files_warm_s": warm,
        "viewer_files_mb": warm_bytes / 1e6,
        "sample_url": (frames_like or [e[0] for e in entries] or [""])[-1][-140:],
    }
    if len(done) >= slices:
        out["full_s"] = max(sorted(done.values())[:slices])
        out["full_how"] = f"last of {slices} slices' requests completed"
    else:
        out["full_s"] = last_dicomweb
        why = f"cut at --full-timeout {full_timeout:g} s" if cut else "network idle 5 s"
        out["full_how"] = f"{why} ({len(done)}/{slices} slices fetched; last /dicom-web answer)"
    if state.get("err"):
        out["probe_error"] = state["err"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=600)
    ap.add_argument("--profiles", default="slow,fast")
    ap.add_argument("--data", type=Path, default=None, help="data folder of the remote node (kept, reused)")
    ap.add_argument("--with", dest="others", default="plain,hilum", help="also time these (plain, hilum) for ratios")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--full-timeout", type=float, default=900.0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    tmp = None
    data = args.data
    if data is None:
        tmp = tempfile.TemporaryDirectory(prefix="hilum-telerad-ohif-")
        data = Path(tmp.name) / "remote"
    data.mkdir(parents=True, exist_ok=True)
    study, series = ensure_data(data, args.slices)
    others = [k.strip() for k in args.others.split(",") if k.strip()]
    node = Node(data)
    results: dict[str, Any] = {"slices": args.slices, "profiles": {}}
    try:
        for name in [p.strip() for p in args.profiles.split(",") if p.strip()]:
            rate, rtt = PROFILES[name]
            prof: dict[str, Any] = {"rate_mbps": rate / 1e6, "rtt_ms": rtt * 1e3}
            for kind in ("ohif", *others):
                proxy = ThrottlingProxy(node.port, rate, rtt)
                try:
                    if kind == "ohif":
                        base = proxy.url.removesuffix("/dicom-web")
                        r = ohif_run(base, study, args.slices, args.full_timeout, proxy)
                    elif kind == "plain":
                        r = plain_wado(proxy.url, study, series)
                    else:
                        r = progressive_driver(proxy.url, study, series, args.workers)
                        r.pop("_check", None)
                    r["wire_mb"] = (proxy.link.bytes["down"] - 1e6 * r.get("viewer_files_mb", 0.0)) / 1e6
                finally:
                    try:
                        proxy.stop()
                    except TimeoutError:  # transfers cut short (--full-timeout): the proxy's thread is a daemon
                        pass
                prof[kind] = r
                print(
                    f"  {name} {kind}: "
                    + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()),
                    flush=True,
                )
            results["profiles"][name] = prof
    finally:
        node.stop()
        if tmp is not None:
            tmp.cleanup()
    print()
    print(
        f"Remote CT: {args.slices} x 512x512, 16-bit, stored Explicit VR LE.  ohif = OHIF in headless Chromium"
        " (viewer files cached, no sign-in); hilum = run.py's adaptive driver"
    )
    print(
        f"{'link':<22}{'':<8}{'first image s':>15}{'all slices s':>14}{'wire MB':>10}"
        f"{'first x':>9}{'full x':>8}   (x: ohif / this; >1: this faster than ohif)"
    )
    for p in results["profiles"].values():
        label = f"{p['rate_mbps']:g} Mbit/s {p['rtt_ms']:g} ms"
        o = p["ohif"]
        for kind in ("ohif", *others):
            r = p[kind]
            ratios = (
                ""
                if kind == "ohif"
                else f"{o['first_image_s'] / r['first_image_s']:>8.1f}x{o['full_s'] / r['full_s']:>7.2f}x"
            )
            print(f"{label:<22}{kind:<8}{r['first_image_s']:>15.2f}{r['full_s']:>14.2f}{r['wire_mb']:>10.1f}{ratios}")
            label = ""
        print(f"{'':<22}ohif: all slices = {o['full_how']}; {o['requests']} /dicom-web requests")
        print(
            f"{'':<22}ohif: series metadata in at {o['metadata_s']:.2f} s, first slice's pixels in at"
            f" {o['first_frame_s']:.2f} s; viewer files (cached before) {o['viewer_files_mb']:.1f} MB"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
