"""Link security: TLS with a clinic CA trusted explicitly, and tokens that expire.

A clinic CA (made here with ``cryptography``) signs the node's certificate;
clients trust that CA explicitly (``ca_file`` on a DICOMweb source, the CA of
an association's TLS context) and nothing else:
* DICOMweb over HTTPS (:class:`DicomWebService` with ``tls_cert``): Hilum's
  client with the clinic CA reads (also adaptive frames, pixel-equal); without
  it, with another CA, or against a certificate for another host name it is
  refused; ``verify_tls = false`` is the explicit way out;
* DICOM over TLS (the node's DIMSE port): C-ECHO with the clinic CA; refused
  without it or with another CA; mutual TLS when the node requires client
  certificates (``tls_ca`` on the node);
* bearer tokens: accepted until they expire, then 401 (the expiry checked on
  every request, the clock moved rather than waited for).
"""

from __future__ import annotations

import datetime as dt
import io
import ipaddress
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests

cryptography = pytest.importorskip("cryptography")
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

from conftest import free_port  # noqa: E402
from hilum.archive import Archive  # noqa: E402
from hilum.archive import users as users_mod  # noqa: E402
from hilum.archive.users import UserStore  # noqa: E402
from hilum.config import Config  # noqa: E402
from hilum.dicom.generator import YAMADA, generate_ct_series, make_study  # noqa: E402
from hilum.dicomweb.adaptive import JPEG_LS_LOSSLESS, Rendition, decode_frame, fetch_frames  # noqa: E402
from hilum.dicomweb.client import DicomWebClient, DicomWebError, DicomWebSource  # noqa: E402
from hilum.dicomweb.service import DicomWebService  # noqa: E402
from hilum.dicomweb.settings import WebSettings  # noqa: E402
from hilum.dimse import scu  # noqa: E402
from hilum.dimse.net import client_ssl_context  # noqa: E402
from hilum.node import Node  # noqa: E402

PW = "correct horse"


# ------------------------------------------------------------------ a clinic CA


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Clinic"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def _write(path: Path, obj: Any) -> Path:
    if isinstance(obj, x509.Certificate):
        path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            obj.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return path


def make_ca(folder: Path, cn: str) -> tuple[Path, x509.Certificate, Any]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write(folder / f"{cn}.crt", cert), cert, key


def issue(
    folder: Path, ca: tuple[Path, x509.Certificate, Any], cn: str, *, host: str = "127.0.0.1", client: bool = False
) -> tuple[Path, Path]:
    """A leaf certificate signed by ``ca`` for ``host`` (an IP or a DNS name); (cert, key) files."""
    _path, ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        san = x509.DNSName(host)
    usage = x509.ExtendedKeyUsageOID.CLIENT_AUTH if client else x509.ExtendedKeyUsageOID.SERVER_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([san]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _write(folder / f"{cn}.crt", cert), _write(folder / f"{cn}.key", key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("pki")
    clinic = make_ca(folder, "clinic-ca")
    other = make_ca(folder, "other-ca")
    return {
        "ca": clinic[0],
        "other_ca": other[0],
        "node": issue(folder, clinic, "node"),
        "wrong_host": issue(folder, clinic, "pacs", host="pacs.other.example"),
        "client": issue(folder, clinic, "reader", client=True),
        "rogue_client": issue(folder, other, "rogue", client=True),
    }


def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("tlsnode")
    arch = Archive(root / "data")
    UserStore.of(arch).add("rita", "radiologist", PW)
    study = make_study(YAMADA, accession="TLS0001", date="20260301", time="101500", seed="tls")
    ct = generate_ct_series(study, rows=64, columns=64, slices=2, seed=3)
    for ds in ct:
        assert arch.ingest(_bytes(ds)).status == "stored"
    arch.ct = ct  # type: ignore[attr-defined]
    arch.root = root  # type: ignore[attr-defined]
    yield arch
    arch.close()


# ------------------------------------------------------------------ DICOMweb over HTTPS


def _service(archive: Any, cert: Path, key: Path) -> DicomWebService:
    cfg = Config(data_dir=archive.root / "data", web_port=0)
    return DicomWebService(cfg, archive, settings=WebSettings(tls_cert=str(cert), tls_key=str(key)))


def test_dicomweb_https_trusts_the_clinic_ca_only(pki: dict[str, Any], archive: Any) -> None:
    with _service(archive, *pki["node"]) as svc:
        assert svc.url.startswith("https://")
        good = DicomWebClient(DicomWebSource("tls", svc.url, "rita", PW, ca_file=str(pki["ca"])))
        studies = good.search_studies({"AccessionNumber": "TLS0001"})
        assert len(studies) == 1
        # adaptive frames over the same verified link: lossless JPEG-LS, pixel-equal
        ds = archive.ct[0]
        ids = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        [data] = fetch_frames(good, *ids, [1], Rendition(JPEG_LS_LOSSLESS))
        arr = decode_frame(
            data, JPEG_LS_LOSSLESS, rows=64, columns=64, pixel_representation=int(ds.PixelRepresentation)
        )
        assert np.array_equal(arr, ds.pixel_array)
        # not trusted: the system CAs alone, another clinic's CA
        for ca in ("", str(pki["other_ca"])):
            with pytest.raises(DicomWebError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
                DicomWebClient(DicomWebSource("tls", svc.url, "rita", PW, ca_file=ca)).search_studies()
        # requests (another TLS stack) agrees
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(svc.url + "/studies", auth=("rita", PW), timeout=10)
        assert requests.get(svc.url + "/studies", auth=("rita", PW), verify=str(pki["ca"]), timeout=10).ok
        # explicit opt-out only
        off = DicomWebClient(DicomWebSource("tls", svc.url, "rita", PW, verify_tls=False))
        assert len(off.search_studies({"AccessionNumber": "TLS0001"})) == 1
        # the plain-HTTP scheme against the TLS port does not get an answer
        with pytest.raises(DicomWebError):
            DicomWebClient(
                DicomWebSource("plain", svc.url.replace("https://", "http://"), "rita", PW, timeout=5)
            ).search_studies()


def test_dicomweb_https_checks_the_host_name(pki: dict[str, Any], archive: Any) -> None:
    # signed by the trusted CA, but for another host: refused
    with _service(archive, *pki["wrong_host"]) as svc:
        with pytest.raises(DicomWebError, match="mismatch|doesn't match|not valid for"):
            DicomWebClient(DicomWebSource("tls", svc.url, "rita", PW, ca_file=str(pki["ca"]))).search_studies()


# ------------------------------------------------------------------ bearer tokens expire


def test_tokens_expire_on_the_wire(pki: dict[str, Any], archive: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    store = UserStore.of(archive)
    token = store.issue_token("rita", ttl=dt.timedelta(minutes=10), label="tls test")
    expired = store.issue_token("rita", ttl=dt.timedelta(seconds=-1))
    with _service(archive, *pki["node"]) as svc:

        def client(tok: str) -> DicomWebClient:
            return DicomWebClient(DicomWebSource("tok", svc.url, token=tok, ca_file=str(pki["ca"])))

        assert len(client(token).search_studies({"AccessionNumber": "TLS0001"})) == 1
        with pytest.raises(DicomWebError) as err:
            client(expired).search_studies()
        assert err.value.status == 401
        # eleven minutes later (the clock moved, not waited for) the good token has expired too
        later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=11)
        monkeypatch.setattr(users_mod, "_now", lambda: later)
        with pytest.raises(DicomWebError) as err:
            client(token).search_studies()
        assert err.value.status == 401
        r = requests.get(
            svc.url + "/studies", headers={"Authorization": f"Bearer {token}"}, verify=str(pki["ca"]), timeout=10
        )
        assert r.status_code == 401 and "Bearer" in r.headers.get("www-authenticate", "")
        # a password still works: only the token expired
        assert requests.get(svc.url + "/studies", auth=("rita", PW), verify=str(pki["ca"]), timeout=10).ok


# ------------------------------------------------------------------ DICOM over TLS


def test_dimse_tls_with_the_clinic_ca(pki: dict[str, Any], tmp_path: Path) -> None:
    cert, key = pki["node"]
    cfg = Config(data_dir=tmp_path / "data", aet="HILUM", dicom_port=free_port(), tls_cert=str(cert), tls_key=str(key))
    with Node(cfg, only=["dimse"]) as n:
        port = n.service("dimse").port  # type: ignore[attr-defined]

        def echo(tls: Any) -> None:
            scu.echo(scu.Target("127.0.0.1", port, "HILUM", "READER", tls=tls, timeout=5))

        echo(client_ssl_context(ca=str(pki["ca"])))
        for tls in (client_ssl_context(), client_ssl_context(ca=str(pki["other_ca"])), None):
            with pytest.raises(scu.DimseError):
                echo(tls)


def test_dimse_mutual_tls(pki: dict[str, Any], tmp_path: Path) -> None:
    """With ``tls_ca`` the node asks for a client certificate signed by the clinic CA."""
    cert, key = pki["node"]
    cfg = Config(
        data_dir=tmp_path / "data",
        aet="HILUM",
        dicom_port=free_port(),
        tls_cert=str(cert),
        tls_key=str(key),
        tls_ca=str(pki["ca"]),
    )
    with Node(cfg, only=["dimse"]) as n:
        port = n.service("dimse").port  # type: ignore[attr-defined]

        def echo(tls: Any) -> None:
            scu.echo(scu.Target("127.0.0.1", port, "HILUM", "READER", tls=tls, timeout=5))

        c_cert, c_key = pki["client"]
        echo(client_ssl_context(ca=str(pki["ca"]), cert=str(c_cert), key=str(c_key)))
        r_cert, r_key = pki["rogue_client"]
        for tls in (
            client_ssl_context(ca=str(pki["ca"])),
            client_ssl_context(ca=str(pki["ca"]), cert=str(r_cert), key=str(r_key)),
        ):
            with pytest.raises(scu.DimseError):
                echo(tls)
