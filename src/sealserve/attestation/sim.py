"""A simulated SGX TEE: real DCAP attestation under a local root of trust — not a bypass.

`init_sim(dir)` creates a local P-256 PKI and DCAP collateral in exactly Intel's formats, and
`SimAttester(dir).quote(...)` produces SGX ECDSA quotes (version 3) that the unmodified
dcap-qvl verifier accepts under `verify_with_root_ca(quote, collateral, root_ca_der, now)`
— and rejects under Intel's root. Every check of the real path runs: quote signature, QE
report signature by the PCK key, the QE report binding the attestation key, PCK chain and
CRLs, signed TCB Info and QE Identity and their validity windows, TCB level matching, the
debug bit. `verify.verify_quote` marks claims verified against this root `tee="sim"`, and a
policy accepts them only if it lists "sim" (an insecure setting that logs a warning).

What `init_sim` writes, all-or-nothing (the directory appears complete or not at all):

- `root_ca.der` (0644): the simulated root CA, what a verifier trusts instead of Intel's;
- `collateral.json` (0644): `QuoteCollateralV3` serde JSON — root CRL, PCK CA chain and CRL,
  TCB-signing chain, TCB Info v3 and QE Identity v2 with their signatures;
- `pck_chain.pem` (0644): PCK leaf → PCK Processor CA → root, the quotes' certification data;
- `attestation_key.pem` (0600): the simulated QE's ECDSA attestation key (signs quotes);
- `pck_key.pem` (0600): the PCK leaf's key (signs the QE report);
- `sim.json` (0644): the platform parameters (FMSPC, CPUSVN, PCESVN, QE SVN, window).

The root, PCK CA and TCB-signing keys are discarded after signing: when the collateral
expires (`validity_seconds`, 30 days by default) make a new simulated TEE and trust its root.

Layouts follow Intel's "ECDSA Quote Library API" (quote v3: 48-byte header, 384-byte report
body, signature data with QE report, QE auth data and certification data type 5), the PCK
certificate profile (SGX extension OID 1.2.840.113741.1.13.1 with PPID, TCB component SVNs,
PCESVN, CPUSVN, PCE-ID, FMSPC, SGX type), and PCS API v4 (TCB Info v3, QE Identity v2,
signatures: raw r||s over the exact JSON bytes).

Thread safety: `SimAttester` only reads its directory; quoting is safe from any thread.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import dcap_qvl
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from sealserve.attestation.collateral import Collateral, load_collateral
from sealserve.attestation.evidence import Evidence, check_report_data
from sealserve.errors import FailedPrecondition, InvalidArgument, NotFound
from sealserve.fsio import (
    PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE,
    atomic_output_dir,
    atomic_output_file,
    read_user_file,
)

DEFAULT_VALIDITY_SECONDS = 30 * 24 * 3600
#: Backdating of every "not before" / issueDate, so that a verifier whose clock is a little
#: behind the simulator's still accepts fresh collateral.
CLOCK_SKEW_SECONDS = 300

#: FMSPC of the simulated platform ("5EA15E": sealse[rve]); not an Intel platform family.
SIM_FMSPC = bytes.fromhex("5EA15E000000")
SIM_PCE_ID = bytes(2)
#: The simulated enclave signer (MRSIGNER) when a caller does not choose one.
SIM_MR_SIGNER = hashlib.sha256(b"sealserve simulated enclave signer v1").digest()
#: Intel's QE vendor id (quote header offset 12), which the simulated QE reuses.
QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

_SGX_EXTENSION = "1.2.840.113741.1.13.1"
_CPU_SVN = bytes([2, 2, 2, 2, 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0])  # 16 TCB component SVNs
_PCE_SVN = 13
_QE_ISV_SVN = 8
_QE_ISV_PROD_ID = 1
_QE_MR_SIGNER = hashlib.sha256(b"sealserve simulated quoting enclave signer v1").digest()
_QE_MR_ENCLAVE = hashlib.sha256(b"sealserve simulated quoting enclave v1").digest()
_TCB_EVALUATION_DATA_NUMBER = 17
_QE_AUTH_DATA = bytes(range(32))  # what Intel's QE puts there too

# SGX ATTRIBUTES.FLAGS (Intel SDM Vol. 3D 34.7.1): INIT, DEBUG, MODE64BIT, PROVISIONKEY.
_FLAG_INIT, _FLAG_DEBUG, _FLAG_MODE64, _FLAG_PROVISIONKEY = 0x01, 0x02, 0x04, 0x10
_XFRM = 0xE7  # x87, SSE, AVX, AVX-512 state: what current Xeon enclaves report

_ATTESTATION_KEY_TYPE_ECDSA_P256 = 2
_CERT_DATA_PCK_CHAIN = 5

FILES = (
    "root_ca.der",
    "collateral.json",
    "pck_chain.pem",
    "attestation_key.pem",
    "pck_key.pem",
    "sim.json",
)


# --- DER, just enough for the SGX extension (X.690) ------------------------------------


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def _der_oid(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    out = bytearray([40 * arcs[0] + arcs[1]])
    for arc in arcs[2:]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out += bytes(reversed(chunk))
    return _der(0x06, bytes(out))


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _der_seq(*items: bytes) -> bytes:
    return _der(0x30, b"".join(items))


def _sgx_extension(ppid: bytes, cpu_svn: bytes, pce_svn: int) -> bytes:
    """The PCK certificate's SGX extension value (Intel "PCK Certificate and CRL Profile")."""
    oid = _SGX_EXTENSION
    tcb = [_der_seq(_der_oid(f"{oid}.2.{i + 1}"), _der_int(svn)) for i, svn in enumerate(cpu_svn)]
    tcb.append(_der_seq(_der_oid(f"{oid}.2.17"), _der_int(pce_svn)))
    tcb.append(_der_seq(_der_oid(f"{oid}.2.18"), _der(0x04, cpu_svn)))
    return _der_seq(
        _der_seq(_der_oid(f"{oid}.1"), _der(0x04, ppid)),
        _der_seq(_der_oid(f"{oid}.2"), _der_seq(*tcb)),
        _der_seq(_der_oid(f"{oid}.3"), _der(0x04, SIM_PCE_ID)),
        _der_seq(_der_oid(f"{oid}.4"), _der(0x04, SIM_FMSPC)),
        _der_seq(_der_oid(f"{oid}.5"), _der(0x0A, b"\x00")),  # SGX type: Standard
    )


# --- the PKI -----------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sealserve simulated TEE"),
        ]
    )


def _utc(unix: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(unix, tz=dt.UTC)


def _rfc3339(unix: int) -> str:
    return _utc(unix).strftime("%Y-%m-%dT%H:%M:%SZ")


def _raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 as the 64-byte r||s DCAP uses everywhere."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def _public_xy(key: ec.EllipticCurvePrivateKey) -> bytes:
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return point[1:]  # drop the 0x04 prefix: the quote stores x||y


def _certificate(
    *,
    subject: str,
    issuer: str,
    public_key: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    signer_public: ec.EllipticCurvePublicKey,
    start: int,
    end: int,
    ca_path_length: int | None,
    is_ca: bool,
    extra: x509.UnrecognizedExtension | None = None,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_utc(start))
        .not_valid_after(_utc(end))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=ca_path_length), True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not is_ca,
                content_commitment=not is_ca,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=is_ca,
                crl_sign=is_ca,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_public), False)
    )
    if extra is not None:
        builder = builder.add_extension(extra, False)
    return builder.sign(signer, hashes.SHA256())


def _crl(
    issuer: str, key: ec.EllipticCurvePrivateKey, start: int, next_update: int
) -> x509.CertificateRevocationList:
    return (
        x509.CertificateRevocationListBuilder()
        .issuer_name(_name(issuer))
        .last_update(_utc(start))
        .next_update(_utc(next_update))
        .add_extension(x509.CRLNumber(1), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )


def _pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class SimTee:
    """A simulated TEE's public side: what a verifier needs."""

    directory: Path
    root_ca_der: bytes
    collateral: Collateral

    @property
    def expires_at(self) -> int:
        return self.collateral.expires_at


def init_sim(
    directory: str | os.PathLike[str],
    *,
    now: int | None = None,
    validity_seconds: int = DEFAULT_VALIDITY_SECONDS,
) -> SimTee:
    """Create a simulated TEE in the new directory `directory` (see the module docstring).

    `now` (unix seconds, default the current time) starts every validity window; the
    collateral verifies from `now - CLOCK_SKEW_SECONDS` until `now + validity_seconds`.
    """
    directory = Path(directory)
    start_time = int(time.time()) if now is None else now
    if isinstance(start_time, bool) or not isinstance(start_time, int) or start_time <= 0:
        raise InvalidArgument("now must be a positive integer of unix seconds")
    if validity_seconds <= CLOCK_SKEW_SECONDS:
        raise InvalidArgument(f"validity_seconds must exceed {CLOCK_SKEW_SECONDS}")
    start = start_time - CLOCK_SKEW_SECONDS
    next_update = start_time + validity_seconds
    cert_end = max(next_update, start_time + 10 * 365 * 24 * 3600)

    root_key = ec.generate_private_key(ec.SECP256R1())
    pck_ca_key = ec.generate_private_key(ec.SECP256R1())
    tcb_key = ec.generate_private_key(ec.SECP256R1())
    pck_key = ec.generate_private_key(ec.SECP256R1())
    attestation_key = ec.generate_private_key(ec.SECP256R1())

    # Names echo Intel's ("... PCK Processor CA"): PCS clients read the CA kind from them.
    root_cn = "sealserve Simulated SGX Root CA"
    pck_ca_cn = "sealserve Simulated SGX PCK Processor CA"
    root_pub = root_key.public_key()
    root = _certificate(
        subject=root_cn,
        issuer=root_cn,
        public_key=root_pub,
        signer=root_key,
        signer_public=root_pub,
        start=start,
        end=cert_end,
        ca_path_length=1,
        is_ca=True,
    )
    pck_ca = _certificate(
        subject=pck_ca_cn,
        issuer=root_cn,
        public_key=pck_ca_key.public_key(),
        signer=root_key,
        signer_public=root_pub,
        start=start,
        end=cert_end,
        ca_path_length=0,
        is_ca=True,
    )
    tcb_signing = _certificate(
        subject="sealserve Simulated SGX TCB Signing",
        issuer=root_cn,
        public_key=tcb_key.public_key(),
        signer=root_key,
        signer_public=root_pub,
        start=start,
        end=cert_end,
        ca_path_length=None,
        is_ca=False,
    )
    ppid = hashlib.sha256(_public_xy(pck_key)).digest()[:16]
    pck_leaf = _certificate(
        subject="sealserve Simulated SGX PCK Certificate",
        issuer=pck_ca_cn,
        public_key=pck_key.public_key(),
        signer=pck_ca_key,
        signer_public=pck_ca_key.public_key(),
        start=start,
        end=cert_end,
        ca_path_length=None,
        is_ca=False,
        extra=x509.UnrecognizedExtension(
            x509.ObjectIdentifier(_SGX_EXTENSION), _sgx_extension(ppid, _CPU_SVN, _PCE_SVN)
        ),
    )
    # CRLs outlive TCB Info / QE Identity by an hour (Intel's CRLs have their own cadence
    # too), so expiry is reported as "... expired" for the signed JSON, the clearer reason.
    root_crl = _crl(root_cn, root_key, start, next_update + 3600)
    pck_crl = _crl(pck_ca_cn, pck_ca_key, start, next_update + 3600)

    # TCB Info v3 (PCS API v4 `GET /sgx/certification/v4/tcb`): one level, the platform's.
    tcb_info = json.dumps(
        {
            "id": "SGX",
            "version": 3,
            "issueDate": _rfc3339(start),
            "nextUpdate": _rfc3339(next_update),
            "fmspc": SIM_FMSPC.hex().upper(),
            "pceId": SIM_PCE_ID.hex().upper(),
            "tcbType": 0,
            "tcbEvaluationDataNumber": _TCB_EVALUATION_DATA_NUMBER,
            "tcbLevels": [
                {
                    "tcb": {
                        "sgxtcbcomponents": [{"svn": svn} for svn in _CPU_SVN],
                        "pcesvn": _PCE_SVN,
                    },
                    "tcbDate": _rfc3339(start),
                    "tcbStatus": "UpToDate",
                }
            ],
        },
        separators=(",", ":"),
    )
    # QE Identity v2 (PCS API v4 `GET /sgx/certification/v4/qe/identity`).
    qe_identity = json.dumps(
        {
            "id": "QE",
            "version": 2,
            "issueDate": _rfc3339(start),
            "nextUpdate": _rfc3339(next_update),
            "tcbEvaluationDataNumber": _TCB_EVALUATION_DATA_NUMBER,
            "miscselect": "00000000",
            "miscselectMask": "FFFFFFFF",
            "attributes": "11000000000000000000000000000000",
            "attributesMask": "FBFFFFFFFFFFFFFF0000000000000000",
            "mrsigner": _QE_MR_SIGNER.hex().upper(),
            "isvprodid": _QE_ISV_PROD_ID,
            "tcbLevels": [
                {
                    "tcb": {"isvsvn": _QE_ISV_SVN},
                    "tcbDate": _rfc3339(start),
                    "tcbStatus": "UpToDate",
                }
            ],
        },
        separators=(",", ":"),
    )
    dcap = dcap_qvl.QuoteCollateralV3(
        pck_crl_issuer_chain=_pem(pck_ca, root),
        root_ca_crl=root_crl.public_bytes(serialization.Encoding.DER),
        pck_crl=pck_crl.public_bytes(serialization.Encoding.DER),
        tcb_info_issuer_chain=_pem(tcb_signing, root),
        tcb_info=tcb_info,
        tcb_info_signature=_raw_signature(tcb_key, tcb_info.encode()),
        qe_identity_issuer_chain=_pem(tcb_signing, root),
        qe_identity=qe_identity,
        qe_identity_signature=_raw_signature(tcb_key, qe_identity.encode()),
    )
    collateral = Collateral.from_dcap(dcap, source="simulated collateral")
    root_der = root.public_bytes(serialization.Encoding.DER)
    parameters = {
        "format": "sealserve-sim-v1",
        "fmspc": SIM_FMSPC.hex().upper(),
        "cpu_svn": _CPU_SVN.hex(),
        "pce_svn": _PCE_SVN,
        "qe_svn": _QE_ISV_SVN,
        "qe_mr_signer": _QE_MR_SIGNER.hex(),
        "not_before": collateral.not_before,
        "expires_at": collateral.expires_at,
        "root_ca_sha256": hashlib.sha256(root_der).hexdigest(),
    }
    outputs = {
        "root_ca.der": (root_der, 0o644),
        "collateral.json": (collateral.json_text.encode(), 0o644),
        "pck_chain.pem": (_pem(pck_leaf, pck_ca, root).encode(), 0o644),
        "attestation_key.pem": (_key_pem(attestation_key), PRIVATE_FILE_MODE),
        "pck_key.pem": (_key_pem(pck_key), PRIVATE_FILE_MODE),
        "sim.json": (json.dumps(parameters, indent=2).encode() + b"\n", 0o644),
    }
    with atomic_output_dir(directory, mode=PRIVATE_DIR_MODE) as staging:
        for name, (content, mode) in outputs.items():
            with atomic_output_file(staging / name, mode=mode) as out:
                out.write(content)
    return SimTee(directory=directory, root_ca_der=root_der, collateral=collateral)


def load_sim(directory: str | os.PathLike[str]) -> SimTee:
    """The public side (root CA and collateral) of a simulated TEE made by `init_sim`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise NotFound(f"simulated TEE directory {directory} not found (create it with init_sim)")
    root = read_user_file(directory / "root_ca.der", "simulated root CA")
    return SimTee(
        directory=directory,
        root_ca_der=root,
        collateral=load_collateral(directory / "collateral.json"),
    )


# --- quotes ------------------------------------------------------------------------------


def _report_body(
    *,
    cpu_svn: bytes,
    flags: int,
    mr_enclave: bytes,
    mr_signer: bytes,
    isv_prod_id: int,
    isv_svn: int,
    report_data: bytes,
) -> bytes:
    """An SGX REPORT body (sgx_report_body_t, 384 bytes)."""
    body = bytearray(384)
    body[0:16] = cpu_svn  # 0 CPUSVN
    # 16 MISCSELECT (0), 20 reserved, 32 ISVEXTPRODID (0)
    struct.pack_into("<QQ", body, 48, flags, _XFRM)  # 48 ATTRIBUTES.FLAGS, .XFRM
    body[64:96] = mr_enclave  # 64 MRENCLAVE
    body[128:160] = mr_signer  # 128 MRSIGNER
    # 192 CONFIGID (0)
    struct.pack_into("<HH", body, 256, isv_prod_id, isv_svn)  # 256 ISVPRODID, 258 ISVSVN
    # 260 CONFIGSVN (0), 262 reserved, 304 ISVFAMILYID (0)
    body[320:384] = report_data  # 320 REPORTDATA
    return bytes(body)


def _load_key(path: Path, what: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(read_user_file(path, what), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise InvalidArgument(f"{what} {path} is not a P-256 private key")
    return key


class SimAttester:
    """Quotes from a simulated TEE made by `init_sim`.

    `quote(...)` signs a quote for any enclave identity the caller names. As an `Attester`
    (`evidence(report_data)`), it quotes for a fixed identity: `mr_enclave` if given, else
    `measurement.measurement(launch_config, code_root=code_root)` — SHA-256 over the installed
    sealserve code and the launch configuration — so the simulated MRENCLAVE changes whenever
    either does.
    """

    tee = "sim"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        mr_enclave: bytes | None = None,
        launch_config: dict[str, object] | None = None,
        code_root: str | os.PathLike[str] | None = None,
        mr_signer: bytes = SIM_MR_SIGNER,
        isv_prod_id: int = 0,
        isv_svn: int = 0,
    ) -> None:
        self.directory = Path(directory)
        if not (self.directory / "sim.json").is_file():
            raise FailedPrecondition(
                f"{self.directory} is not a simulated TEE (no sim.json); create it with init_sim"
            )
        self._attestation_key = _load_key(
            self.directory / "attestation_key.pem", "simulated attestation key"
        )
        self._pck_key = _load_key(self.directory / "pck_key.pem", "simulated PCK key")
        chain = read_user_file(self.directory / "pck_chain.pem", "simulated PCK chain")
        self._cert_data = chain + b"\x00"  # Intel's QE NUL-terminates the PEM chain
        if mr_enclave is None:
            from sealserve.attestation.measurement import measurement

            mr_enclave = measurement(launch_config or {}, code_root=code_root)
        self.mr_enclave = bytes(mr_enclave)
        self.mr_signer = bytes(mr_signer)
        self.isv_prod_id = isv_prod_id
        self.isv_svn = isv_svn
        self._check_identity(self.mr_enclave, self.mr_signer, isv_prod_id, isv_svn)

    @staticmethod
    def _check_identity(mr_enclave: bytes, mr_signer: bytes, prod_id: int, svn: int) -> None:
        if len(mr_enclave) != 32 or len(mr_signer) != 32:
            raise InvalidArgument("mr_enclave and mr_signer must be 32 bytes")
        if not (0 <= prod_id <= 0xFFFF and 0 <= svn <= 0xFFFF):
            raise InvalidArgument("isv_prod_id and isv_svn must fit in 16 bits")

    def evidence(self, report_data: bytes) -> Evidence:
        return Evidence(tee=self.tee, quote=self.quote(report_data, self.mr_enclave))

    def quote(
        self,
        report_data: bytes,
        mr_enclave: bytes,
        *,
        mr_signer: bytes | None = None,
        isv_prod_id: int | None = None,
        isv_svn: int | None = None,
        debug: bool = False,
    ) -> bytes:
        """An SGX ECDSA quote v3 for an enclave with these identity fields.

        `debug=True` sets ATTRIBUTES.DEBUG, which every DCAP verifier must reject.
        """
        report_data = check_report_data(report_data)
        mr_signer = self.mr_signer if mr_signer is None else bytes(mr_signer)
        prod_id = self.isv_prod_id if isv_prod_id is None else isv_prod_id
        svn = self.isv_svn if isv_svn is None else isv_svn
        self._check_identity(bytes(mr_enclave), mr_signer, prod_id, svn)

        # Header (sgx_quote_header_t): version 3, ECDSA-256-with-P-256 key, QE SVN, PCE SVN,
        # QE vendor id, user data (the first 16 bytes conventionally a QE id).
        header = struct.pack(
            "<HHIHH16s20s",
            3,
            _ATTESTATION_KEY_TYPE_ECDSA_P256,
            0,
            _QE_ISV_SVN,
            _PCE_SVN,
            QE_VENDOR_ID,
            hashlib.sha256(b"sealserve sim QE id").digest()[:16] + bytes(4),
        )
        flags = _FLAG_INIT | _FLAG_MODE64 | (_FLAG_DEBUG if debug else 0)
        body = _report_body(
            cpu_svn=_CPU_SVN,
            flags=flags,
            mr_enclave=bytes(mr_enclave),
            mr_signer=mr_signer,
            isv_prod_id=prod_id,
            isv_svn=svn,
            report_data=report_data,
        )
        attestation_public = _public_xy(self._attestation_key)
        # The QE binds the attestation key: QE REPORTDATA[0:32] = SHA-256(key || auth data).
        qe_report = _report_body(
            cpu_svn=_CPU_SVN,
            flags=_FLAG_INIT | _FLAG_MODE64 | _FLAG_PROVISIONKEY,
            mr_enclave=_QE_MR_ENCLAVE,
            mr_signer=_QE_MR_SIGNER,
            isv_prod_id=_QE_ISV_PROD_ID,
            isv_svn=_QE_ISV_SVN,
            report_data=hashlib.sha256(attestation_public + _QE_AUTH_DATA).digest() + bytes(32),
        )
        signature_data = b"".join(
            [
                _raw_signature(self._attestation_key, header + body),  # ISV report signature
                attestation_public,
                qe_report,
                _raw_signature(self._pck_key, qe_report),  # QE report signed by the PCK key
                struct.pack("<H", len(_QE_AUTH_DATA)),
                _QE_AUTH_DATA,
                struct.pack("<HI", _CERT_DATA_PCK_CHAIN, len(self._cert_data)),
                self._cert_data,
            ]
        )
        return header + body + struct.pack("<I", len(signature_data)) + signature_data
