"""The web viewer served by the node (issue 18): OHIF at /viewer in a real headless Chromium.

A real node (``hilum serve`` in its own process on loopback, its archive and users) serves OHIF's
prebuilt files as installer/setup.sh fetched them; Debian's ``chromium`` + ``chromium-driver``,
driven by Selenium, signs in, lists, opens a CT and scrolls.  Screenshots of the viewport are
compared with ``hilum render`` of the slice OHIF says it shows (its "I: n (k/N)" overlay):
both are reduced to the image's own 128×128 grid, and must correlate above
``MIN_CORRELATION`` with a mean absolute difference under ``MAX_MEAN_DIFF`` grey levels (OHIF
and Hilum apply the same window, W 400 L 40 from the files; what differs is OHIF's upscaling
filter and the canvas edges).  A link to one study opens that study and nothing else, and
stops working when it expires.
"""

from __future__ import annotations

import ctypes
import http.client
import io
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from PIL import Image

from conftest import free_port, wait_port
from hilum.archive import Archive
from hilum.archive.users import StudyLinks, UserStore
from hilum.config import Config
from hilum.dicom.generator import YAMADA, generate_ct_series, generate_mr_series, make_study
from hilum.dicom.generator.people import Patient
from hilum.dicomweb.settings import WebSettings
from hilum.dicomweb.viewer import viewer_dir

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
PW = "correct horse"
SIZE = 128
SLICES = 12
MIN_CORRELATION = 0.95
MAX_MEAN_DIFF = 12.0
OUT = Path(__file__).resolve().parent.parent / "bench" / "out" / "web_viewer"

pytestmark = pytest.mark.timeout(420)

needs_browser = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER and viewer_dir(WebSettings())),
    reason="needs Debian's chromium + chromium-driver and the OHIF files (bash installer/setup.sh)",
)


def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies (a crashed test leaves no server behind)."""
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real ``hilum serve`` (its own process) on loopback, with users and three studies; anonymous off."""
    root = tmp_path_factory.mktemp("webviewer")
    data = root / "data"
    archive = Archive(data)
    users = UserStore.of(archive)
    users.add("rita", "radiologist", PW)
    users.add("vic", "viewer", PW)
    ct_study = make_study(YAMADA, accession="WV0001", date="20261101", seed="webviewer-ct")
    ct = generate_ct_series(ct_study, rows=SIZE, columns=SIZE, slices=SLICES, seed=3)
    other_patient = Patient("Okafor^Ngozi", "HIL-WV02", "19800101", "F")
    mr_study = make_study(
        other_patient,
        accession="WV0002",
        date="20261102",
        description="MR Brain",
        body_part="HEAD",
        seed="webviewer-mr",
    )
    mr = generate_mr_series(mr_study, rows=64, columns=64, slices=3, seed=4)
    # A study whose ModalitiesInStudy is empty: OHIF's list used to crash on its {"vr":"CS"}.
    odd_patient = Patient("Zeta^Empty", "HIL-WV03", "19700101", "O")
    odd_study = make_study(
        odd_patient, accession="WV0003", date="20261103", description="No modality", seed="webviewer-odd"
    )
    odd = generate_ct_series(odd_study, rows=32, columns=32, slices=1, seed=5)
    for ds in odd:
        ds.Modality = ""
    for ds in [*ct, *mr, *odd]:
        assert archive.ingest(_bytes(ds)).status == "stored"
    port = free_port()
    Config(data_dir=data, web_port=port, dicom_port=free_port(), hl7_port=free_port(),
           extra={"web": {"anonymous": "never"}}).save()  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "hilum", "serve", "--data", str(data)],
        stdout=subprocess.DEVNULL, stderr=(root / "serve.log").open("wb"), preexec_fn=_die_with_parent,
    )  # fmt: skip
    try:
        wait_port(port, 60)
        base = f"http://127.0.0.1:{port}"
        yield {"base": base, "archive": archive, "data": data, "root": root, "ct": ct, "ct_study": ct_study.uid,
               "mr_study": mr_study.uid, "odd_study": odd_study.uid, "users": users}  # fmt: skip
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        archive.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium + chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

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
    opts.binary_location = CHROMIUM
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


# ------------------------------------------------------------------ helpers


def _wait(what: str, fn: Any, timeout: float = 60.0, every: float = 0.25) -> Any:
    end = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < end:
        try:
            last = fn()
        except Exception as exc:  # noqa: BLE001 - the page is still changing
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def _sign_in(driver: Any, base: str, user: str = "rita", password: str = PW) -> None:
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(base + "/viewer/")
    _wait("the sign-in page", lambda: "/viewer/login" in driver.current_url and driver.find_element(By.ID, "name"))
    OUT.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(OUT / "login.png"))
    driver.find_element(By.ID, "name").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "sign-in").click()


def _skip_tour(driver: Any) -> None:
    from selenium.webdriver.common.by import By

    for b in driver.find_elements(By.XPATH, "//*[normalize-space()='Skip all']"):
        if b.is_displayed():
            b.click()
            time.sleep(0.3)


def _overlay_index(driver: Any) -> tuple[int, int, int]:
    """(instance number, position, count) from OHIF's "I: n (k/N)" viewport overlay."""
    text = driver.find_element("css selector", "body").text
    m = re.search(r"I:\s*(\d+)\s*\((\d+)/(\d+)\)", text)
    assert m, "no image index overlay"
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def _viewport(driver: Any) -> Any:
    canvases = [c for c in driver.find_elements("css selector", "canvas.cornerstone-canvas") if c.is_displayed()]
    assert canvases, "no cornerstone canvas"
    return canvases[0]


def _viewport_image(driver: Any, name: str) -> np.ndarray:
    """The image area of the viewport as grey levels on the image's own SIZE×SIZE grid."""
    canvas = _viewport(driver)
    rect = driver.execute_script(
        "const r = arguments[0].getBoundingClientRect();return [r.left, r.top, r.width, r.height];", canvas
    )
    png = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("L")
    OUT.mkdir(parents=True, exist_ok=True)
    png.save(OUT / f"{name}-page.png")
    left, top, width, height = (float(v) for v in rect)
    side = min(width, height)  # OHIF fits the square image into the viewport, centred
    x0, y0 = left + (width - side) / 2, top + (height - side) / 2
    crop = png.crop((round(x0), round(y0), round(x0 + side), round(y0 + side)))
    crop.save(OUT / f"{name}-viewport.png")
    return np.asarray(crop.resize((SIZE, SIZE), Image.Resampling.BOX), dtype=np.float64)


def _rendered(node: dict[str, Any], instance_number: int, tmp: Path) -> np.ndarray:
    """``hilum render`` of the CT slice with this InstanceNumber (the CLI, in its own process)."""
    ds = next(d for d in node["ct"] if int(d.InstanceNumber) == instance_number)
    src = node["archive"].path(ds.SOPInstanceUID)
    out = tmp / f"render-{instance_number}.png"
    subprocess.run(
        [sys.executable, "-m", "hilum", "render", str(src), "-o", str(out)],
        check=True,
        timeout=120,
        capture_output=True,
    )
    img = Image.open(out).convert("L")
    assert img.size == (SIZE, SIZE)
    return np.asarray(img, dtype=np.float64)


def _compare(shown: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    m = 6  # leave out the border, where OHIF's upscaling filter meets the black background
    a, b = shown[m:-m, m:-m].ravel(), reference[m:-m, m:-m].ravel()
    return float(np.corrcoef(a, b)[0, 1]), float(np.abs(a - b).mean())


def _check_slice(driver: Any, node: dict[str, Any], tmp: Path, name: str) -> int:
    number, _pos, count = _overlay_index(driver)
    assert count == SLICES
    shown = _viewport_image(driver, name)
    reference = _rendered(node, number, tmp)
    corr, diff = _compare(shown, reference)
    (OUT / f"{name}-metrics.json").write_text(
        json.dumps({"instance": number, "correlation": corr, "mean_abs_diff": diff})
    )
    assert corr >= MIN_CORRELATION and diff <= MAX_MEAN_DIFF, (name, number, corr, diff)
    # ... and it is that slice, not just any: its neighbours two slices away match worse.
    for other in (number - 2, number + 2):
        if 1 <= other <= SLICES:
            assert _compare(shown, _rendered(node, other, tmp))[0] < corr
    return number


def _study_uids(resp: requests.Response) -> list[str]:
    return [r["0020000D"]["Value"][0] for r in resp.json()]


# ------------------------------------------------------------------ HTTP level (no browser)


def test_sign_in_page_is_throttled_like_basic_logins(node: dict[str, Any]) -> None:
    login = node["base"] + "/viewer/login"
    codes = [requests.post(login, data={"name": "vic", "password": f"guess {i}"}, timeout=30,
                           allow_redirects=False).status_code for i in range(6)]  # fmt: skip
    assert codes[:5] == [401] * 5 and codes[5] == 429
    locked = requests.post(login, data={"name": "vic", "password": PW}, timeout=30, allow_redirects=False)
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0  # even the right password waits
    assert "hilum_session" not in locked.headers.get("set-cookie", "")


def test_viewer_page_needs_sign_in_and_standard_clients_are_unchanged(node: dict[str, Any]) -> None:
    base = node["base"]
    r = requests.get(base + "/viewer/viewer?StudyInstanceUIDs=1.2.3", allow_redirects=False, timeout=30)
    assert r.status_code == 303 and r.headers["location"].startswith("/viewer/login?next=")
    r = requests.get(base + "/dicom-web/studies", timeout=30)
    assert r.status_code == 401 and "Basic" in r.headers["www-authenticate"]  # HTTP clients: a Basic challenge
    cfg = requests.get(base + "/viewer/app-config.js", timeout=30)
    assert cfg.status_code == 200 and "'/dicom-web'" in cfg.text and "routerBasename: '/viewer'" in cfg.text
    assert "cloudfront" not in cfg.text  # no data source outside the node
    # The standard answer keeps the empty ModalitiesInStudy; the viewer's requests do not get it.
    std = requests.get(base + "/dicom-web/studies", auth=("rita", PW), timeout=30).json()
    odd = next(s for s in std if s["0020000D"]["Value"][0] == node["odd_study"])
    assert odd["00080061"] == {"vr": "CS"}
    via_page = requests.get(
        base + "/dicom-web/studies", auth=("rita", PW), timeout=30, headers={"Referer": base + "/viewer/"}
    ).json()
    odd = next(s for s in via_page if s["0020000D"]["Value"][0] == node["odd_study"])
    assert "00080061" not in odd
    ct = next(s for s in via_page if s["0020000D"]["Value"][0] == node["ct_study"])
    assert ct["00080061"]["Value"] == ["CT"]


def test_sign_in_cookie_reads_only_and_sign_out_revokes_it(node: dict[str, Any]) -> None:
    base = node["base"]
    s = requests.Session()
    bad = s.post(
        base + "/viewer/login", data={"name": "rita", "password": "wrong password"}, timeout=30, allow_redirects=False
    )
    assert bad.status_code == 401 and "Wrong user name or password" in bad.text
    r = s.post(
        base + "/viewer/login",
        data={"name": "rita", "password": PW, "next": "https://evil.example/"},
        timeout=30,
        allow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/viewer/"  # no open redirect
    cookie = r.headers["set-cookie"]
    assert (
        "hilum_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    )
    assert s.get(base + "/dicom-web/studies", timeout=30).status_code == 200
    # Reading only: a cookie never authorises a store (a forged cross-site form cannot write).
    stow = s.post(
        base + "/dicom-web/studies",
        data=b"x",
        timeout=30,
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
    )
    assert stow.status_code == 401
    assert s.get(base + "/viewer/", timeout=30, allow_redirects=False).status_code == 200
    out = s.post(base + "/viewer/logout", timeout=30, allow_redirects=False)
    assert out.status_code == 303
    token = cookie.split("hilum_session=", 1)[1].split(";", 1)[0]
    again = requests.get(base + "/dicom-web/studies", cookies={"hilum_session": token}, timeout=30)
    assert again.status_code == 401 and "Basic" not in again.headers["www-authenticate"]  # no browser dialog


def test_link_token_reads_its_study_only_until_it_expires(node: dict[str, Any]) -> None:
    base = node["base"]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "hilum",
            "users",
            "--data",
            str(node["data"]),
            "link",
            node["ct_study"],
            "--minutes",
            "30",
            "--json",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    link = json.loads(out.stdout)
    token = link["token"]
    assert link["url"].endswith("/viewer/link/" + token)
    assert datetime.fromisoformat(link["expires"]) - datetime.now(UTC) < timedelta(minutes=31)
    jar = {"hilum_link": token}
    ct, mr = node["ct_study"], node["mr_study"]
    ok = requests.get(f"{base}/dicom-web/studies?StudyInstanceUID={ct}", cookies=jar, timeout=30)
    assert ok.status_code == 200 and _study_uids(ok) == [ct]
    assert requests.get(f"{base}/dicom-web/studies/{ct}/series", cookies=jar, timeout=30).status_code == 200
    assert requests.get(f"{base}/dicom-web/studies/{ct}/metadata", cookies=jar, timeout=30).status_code == 200
    for path in (
        f"/dicom-web/studies?StudyInstanceUID={mr}",
        "/dicom-web/studies",
        f"/dicom-web/studies?StudyInstanceUID={ct},{mr}",
        f"/dicom-web/studies/{mr}/series",
        f"/dicom-web/studies/{mr}/metadata",
        f"/dicom-web/series?StudyInstanceUID={mr}",
        f"/wado?requestType=WADO&studyUID={ct}&seriesUID=1&objectUID=1",
    ):
        r = requests.get(base + path, cookies=jar, timeout=30)
        assert r.status_code == 403, path
    # The same token as a bearer token: same grant, nothing more.
    auth = {"Authorization": f"Bearer {token}"}
    assert requests.get(f"{base}/dicom-web/studies/{ct}/series", headers=auth, timeout=30).status_code == 200
    assert requests.get(f"{base}/dicom-web/studies/{mr}/series", headers=auth, timeout=30).status_code == 403
    # Tampered with: refused.
    forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    assert (
        requests.get(f"{base}/dicom-web/studies/{ct}/series", cookies={"hilum_link": forged}, timeout=30).status_code
        == 401
    )
    # Expired: a link signed with the node's key whose lifetime ended a minute ago.
    past = StudyLinks(node["data"], clock=lambda: datetime.now(UTC) - timedelta(minutes=61))
    expired = past.issue(ct, minutes=60, issuer="test")
    r = requests.get(f"{base}/dicom-web/studies/{ct}/series", cookies={"hilum_link": expired}, timeout=30)
    assert r.status_code == 401
    page = requests.get(f"{base}/viewer/link/{expired}", timeout=30)
    assert page.status_code == 401 and "expired" in page.text
    # Revoked: every link at once, from the command line, while the node runs.
    assert requests.get(f"{base}/dicom-web/studies/{ct}/series", cookies=jar, timeout=30).status_code == 200
    subprocess.run([sys.executable, "-m", "hilum", "users", "--data", str(node["data"]), "link", "--revoke-all"],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    assert requests.get(f"{base}/dicom-web/studies/{ct}/series", cookies=jar, timeout=30).status_code == 401


@pytest.mark.skipif(viewer_dir(WebSettings()) is None, reason="the OHIF files are not installed (installer/setup.sh)")
def test_anonymous_viewer_only_when_the_config_says_so(tmp_path: Path) -> None:
    from hilum.dicomweb.service import DicomWebService

    archive = Archive(tmp_path / "data")
    UserStore.of(archive).add("rita", "viewer", PW)  # a user exists: "auto" then wants everyone signed in
    try:
        for mode, page, qido in (("read", 200, 200), ("auto", 303, 401), ("never", 303, 401)):
            svc = DicomWebService(Config(data_dir=tmp_path / "data", web_port=0), archive,
                                  settings=WebSettings(anonymous=mode))  # fmt: skip
            svc.start()
            try:
                base = svc.url.removesuffix("/dicom-web")
                r = requests.get(base + "/viewer/", allow_redirects=False, timeout=30)
                assert r.status_code == page, mode
                if page == 200:
                    assert 'window.PUBLIC_URL="/viewer/"' in r.text and "hilum-sign-out" not in r.text
                assert requests.get(base + "/dicom-web/studies", timeout=30).status_code == qido, mode
            finally:
                svc.stop()
    finally:
        archive.close()


def test_viewer_dir_setting_and_a_node_without_the_viewer(tmp_path: Path) -> None:
    from hilum.dicomweb.service import DicomWebService

    own = tmp_path / "ohif"
    (own / "assets").mkdir(parents=True)
    (own / "index.html").write_text('<html><head><script>window.PUBLIC_URL="/"</script>'
                                    '<script src="/app.js"></script></head><body></body></html>')  # fmt: skip
    (own / "app.js").write_text('__webpack_require__.p = "/";')
    (own / "assets" / "x.txt").write_text("asset")
    archive = Archive(tmp_path / "data")
    try:
        for folder, page in ((own, 200), (tmp_path / "empty", 503)):
            svc = DicomWebService(Config(data_dir=tmp_path / "data", web_port=0), archive,
                                  settings=WebSettings(anonymous="read", viewer_dir=str(folder)))  # fmt: skip
            svc.start()
            try:
                base = svc.url.removesuffix("/dicom-web")
                r = requests.get(base + "/viewer/", timeout=30)
                assert r.status_code == page
                if page == 200:
                    assert 'src="/viewer/app.js"' in r.text
                    js = requests.get(base + "/viewer/app.js", timeout=30)
                    assert js.text == '__webpack_require__.p = "/viewer/";'
                    # gzip-compressed once and kept (OHIF's bundle is 17 MB), plain for who does not accept it
                    assert js.headers["Content-Encoding"] == "gzip" and js.headers["Vary"] == "Accept-Encoding"
                    again = requests.get(base + "/viewer/app.js", timeout=30)
                    assert again.text == js.text and again.headers["Content-Encoding"] == "gzip"
                    plain = requests.get(base + "/viewer/app.js", headers={"Accept-Encoding": "identity"}, timeout=30)
                    assert "Content-Encoding" not in plain.headers and plain.text == js.text
                    (own / "app.js").write_text('__webpack_require__.p = "/"; // v2')  # a new file: not the old gzip
                    assert requests.get(base + "/viewer/app.js", timeout=30).text.endswith("// v2")
                    (own / "app.js").write_text('__webpack_require__.p = "/";')
                    assert requests.get(base + "/viewer/assets/x.txt", timeout=30).text == "asset"
                    host, port = base.removeprefix("http://").split(":")
                    for path in ("/viewer/../data/index.sqlite", "/viewer/%2e%2e/data/index.sqlite"):
                        conn = http.client.HTTPConnection(host, int(port), timeout=30)  # sends the path as it is
                        conn.request("GET", path)
                        leak = conn.getresponse()
                        assert leak.status == 404 and b"SQLite" not in leak.read(), path
                        conn.close()
                    assert requests.get(base + "/viewer/nothing.js", timeout=30).status_code == 404
                else:
                    assert "not installed" in r.text
                # DICOMweb and sign-in work either way.
                assert requests.get(base + "/dicom-web/studies", timeout=30).status_code == 200
                assert requests.get(base + "/viewer/login", timeout=30).status_code == 200
            finally:
                svc.stop()
    finally:
        archive.close()


# ------------------------------------------------------------------ in the browser


@needs_browser
def test_sign_in_list_open_ct_and_scroll(node: dict[str, Any], browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By

    d = browser
    _sign_in(d, node["base"])
    # The list: every study, the one with an empty ModalitiesInStudy too.
    _wait("the study list", lambda: "Okafor" in d.find_element(By.TAG_NAME, "body").text)
    body = d.find_element(By.TAG_NAME, "body").text
    assert "Yamada" in body and "Zeta" in body and "Signed in as rita" in body
    OUT.mkdir(parents=True, exist_ok=True)
    d.save_screenshot(str(OUT / "list.png"))
    # Open the CT as a person does: its row, then the Basic Viewer workflow.
    d.find_element(By.XPATH, "//tr[.//div[contains(text(),'Yamada')]]").click()
    _wait("the workflow button", lambda: d.find_element(By.XPATH, "//button[normalize-space()='Basic Viewer']"))
    d.find_element(By.XPATH, "//button[normalize-space()='Basic Viewer']").click()
    _wait("the CT viewer", lambda: "StudyInstanceUIDs=" + node["ct_study"] in d.current_url)
    _wait("the first image", lambda: _overlay_index(d))
    time.sleep(1.0)  # the tour pops up once the viewport shows
    _skip_tour(d)
    _wait("the image drawn", lambda: _viewport_image(d, "probe").std() > 10)
    first = _check_slice(d, node, tmp_path, "ct-first")
    _n0, pos0, _ = _overlay_index(d)
    # Scroll with the mouse wheel over the viewport: three images on.
    canvas = _viewport(d)
    for _ in range(3):
        ActionChains(d).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, 120).perform()
        time.sleep(0.4)
    _wait("the scrolled image", lambda: _overlay_index(d)[1] == pos0 + 3)
    time.sleep(1.0)
    second = _check_slice(d, node, tmp_path, "ct-scrolled")
    assert abs(second - first) == 3


@needs_browser
def test_link_opens_its_study_in_the_browser_and_nothing_else(
    node: dict[str, Any], browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    d.delete_all_cookies()
    token = StudyLinks(node["data"]).issue(node["ct_study"], minutes=10, issuer="test")
    # Followed from another site (an e-mail, a chat: here a page of its own origin), as a person clicks it.
    href = f"{node['base']}/viewer/link/{token}"
    d.get(f"data:text/html,<a id='shared' href='{href}'>the study</a>")
    d.find_element(By.ID, "shared").click()
    _wait("the CT viewer", lambda: "StudyInstanceUIDs=" + node["ct_study"] in d.current_url)
    _wait("the first image", lambda: _overlay_index(d))
    time.sleep(1.0)
    _skip_tour(d)
    _wait("the image drawn", lambda: _viewport_image(d, "probe").std() > 10)
    _check_slice(d, node, tmp_path, "link-first")
    assert "Read-only link to one study" in d.find_element(By.TAG_NAME, "body").text
    # The same browser asks for another study: refused by the node (fetch, as OHIF would).
    status = d.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"fetch('/dicom-web/studies/{node['mr_study']}/series').then(r => done(r.status), e => done(String(e)));"
    )
    assert status == 403
    own = d.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"fetch('/dicom-web/studies/{node['ct_study']}/series').then(r => done(r.status), e => done(String(e)));"
    )
    assert own == 200
    # The study list is not for link holders: /viewer/ goes straight back to their study.
    d.get(f"{node['base']}/viewer/")
    _wait("back on the study", lambda: "StudyInstanceUIDs=" + node["ct_study"] in d.current_url)
    # Expired: the page says so, and the viewer is not opened.
    expired = StudyLinks(node["data"], clock=lambda: datetime.now(UTC) - timedelta(hours=2)).issue(
        node["ct_study"], minutes=60
    )
    d.delete_all_cookies()
    d.get(f"{node['base']}/viewer/link/{expired}")
    _wait("the refusal", lambda: "Link not valid" in d.find_element(By.TAG_NAME, "body").text)
    d.save_screenshot(str(OUT / "link-expired.png"))
    assert "/viewer/link/" in d.current_url


@needs_browser
def test_sign_out_in_the_browser(node: dict[str, Any], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    d = browser
    _sign_in(d, node["base"])
    _wait("the study list", lambda: "Yamada" in d.find_element(By.TAG_NAME, "body").text)
    d.find_element(By.ID, "hilum-sign-out").click()
    _wait("the sign-in page", lambda: "/viewer/login" in d.current_url)
    d.get(node["base"] + "/viewer/")
    _wait("sent to sign in again", lambda: "/viewer/login" in d.current_url)


# ------------------------------------------------------------------ the workstation's study browser


@pytest.mark.gui
def test_study_browser_open_in_web_viewer_and_copy_link(node: dict[str, Any], qtbot: Any) -> None:
    """The two actions as a person uses them: a click on the row, the shortcut, the button, the context menu."""
    from PySide6.QtCore import QObject, QPoint, Qt, QUrl, Slot
    from PySide6.QtGui import QContextMenuEvent, QDesktopServices, QGuiApplication
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication

    from hilum.ui.main_window import MainWindow

    base, ct, mr = node["base"], node["ct_study"], node["mr_study"]
    cfg = Config(data_dir=node["data"], web_port=int(base.rsplit(":", 1)[1]))
    archive = Archive(node["data"])
    opened: list[str] = []

    class Browser(QObject):  # the "system browser": Qt hands it the URL QDesktopServices.openUrl gets
        @Slot(QUrl)
        def open(self, url: QUrl) -> None:
            opened.append(url.toString())

    handler = Browser()
    QDesktopServices.setUrlHandler("http", handler, "open")
    window = MainWindow(cfg, archive)
    qtbot.addWidget(window)
    try:
        window.show()
        browser = window.browser
        qtbot.waitUntil(lambda: browser.model.find(ct) >= 0, timeout=30_000)
        assert not browser.web_button.isEnabled() or browser.selected_study_uid() is not None
        table = browser.table
        row = browser.model.find(ct)
        pos = table.visualRect(table.model().index(row, 0)).center()
        QTest.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, pos)
        qtbot.waitUntil(lambda: browser.selected_study_uid() == ct and browser.web_button.isEnabled())
        window.activateWindow()  # Xvfb has no window manager: window shortcuts need the window active
        table.setFocus()
        qtbot.waitUntil(lambda: window.isActiveWindow() and table.hasFocus(), timeout=10_000)
        QTest.keyClick(table, Qt.Key.Key_B, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
        qtbot.waitUntil(lambda: bool(opened))
        assert opened == [f"{base}/viewer/viewer?StudyInstanceUIDs={ct}"]
        # Copy link: the button puts a working link on the clipboard.
        QGuiApplication.clipboard().clear()
        qtbot.mouseClick(browser.link_button, Qt.MouseButton.LeftButton)
        url = QGuiApplication.clipboard().text()
        assert url.startswith(base + "/viewer/link/hlk_"), url
        assert "Link copied" in browser.result_label.text()
        s = requests.Session()
        assert s.get(url, timeout=30).status_code == 200  # the node takes it: the link cookie is set
        assert s.get(f"{base}/dicom-web/studies/{ct}/series", timeout=30).status_code == 200
        assert s.get(f"{base}/dicom-web/studies/{mr}/series", timeout=30).status_code == 403
        # The shortcut makes a new link too.
        QGuiApplication.clipboard().clear()
        QTest.keyClick(table, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
        qtbot.waitUntil(lambda: QGuiApplication.clipboard().text().startswith(base + "/viewer/link/"))
        assert QGuiApplication.clipboard().text() != url
        # The context menu of the row has both, enabled.
        viewport = table.viewport()
        QApplication.sendEvent(
            viewport, QContextMenuEvent(QContextMenuEvent.Reason.Mouse, pos, viewport.mapToGlobal(pos))
        )
        menu = browser.context_menu
        assert menu is not None
        names = {a.objectName(): a for a in menu.actions()}
        assert names["openInWebViewerAction"].isEnabled() and names["copyStudyLinkAction"].isEnabled()
        OUT.mkdir(parents=True, exist_ok=True)
        QApplication.primaryScreen().grabWindow(window.winId()).save(str(OUT / "study-browser-menu.png"))
        names["openInWebViewerAction"].trigger()
        qtbot.waitUntil(lambda: len(opened) == 2)
        menu.close()
        assert isinstance(pos, QPoint)
    finally:
        QDesktopServices.unsetUrlHandler("http")
        window.close()
        archive.close()
