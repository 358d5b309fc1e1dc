"""A throwaway certificate authority and a server certificate for 127.0.0.1, made with the openssl CLI.

The `cryptography` package is not a dependency of the project, and the openssl command line
tool ships with every system that has OpenSSL. Keys are EC P-256, so creating them is fast,
and the certificates carry the extensions that strict verifiers (Python 3.13's
VERIFY_X509_STRICT) require: key usage on the CA, key identifiers and a subjectAltName on the leaf.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.redis_server import pick_free_port

OPENSSL_TIMEOUT_S = 30
VALID_DAYS = "2"

_SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
"""


class TLSSetupError(RuntimeError):
    """openssl is missing or one of its commands failed."""


@dataclass(frozen=True)
class Certificates:
    ca_cert: Path
    server_cert: Path
    server_key: Path


def openssl_binary() -> str | None:
    return shutil.which("openssl")


def _openssl(*args: str, cwd: Path) -> None:
    binary = openssl_binary()
    if binary is None:
        raise TLSSetupError("the openssl command is not on PATH")
    completed = subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=OPENSSL_TIMEOUT_S, check=False
    )
    if completed.returncode != 0:
        raise TLSSetupError(
            f"openssl {' '.join(args)} failed with code {completed.returncode}:\n{completed.stderr}"
        )


def make_certificates(directory: Path, name: str = "schedulerd test") -> Certificates:
    """Create a CA and a server certificate for 127.0.0.1 and localhost in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1")
    _openssl(
        "req", "-x509", "-new", "-nodes", *curve, "-keyout", "ca.key", "-out", "ca.pem",
        "-days", VALID_DAYS, "-subj", f"/CN={name} CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "req", "-new", "-nodes", *curve, "-keyout", "server.key", "-out", "server.csr",
        "-subj", f"/CN={name} server",
        cwd=directory,
    )  # fmt: skip
    (directory / "server.ext").write_text(_SERVER_EXTENSIONS)
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", VALID_DAYS, "-extfile", "server.ext",
        cwd=directory,
    )  # fmt: skip
    return Certificates(
        ca_cert=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
    )


def supports_tls(binary: Path) -> bool:
    """Return whether ``binary`` was built with TLS, by starting it with a TLS port and no certificate.

    A build without TLS rejects the tls-port directive as a configuration error. A build with
    TLS gets past the directive and fails for the missing certificate instead. Either way the
    process exits before it binds anything.
    """
    try:
        completed = subprocess.run(
            [str(binary), "--port", "0", "--tls-port", str(pick_free_port()), "--bind", "127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=OPENSSL_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        # subprocess.run has killed it. A server that kept running proves nothing either way.
        return False
    output = completed.stdout + completed.stderr
    return "tls-cert-file" in output and "FATAL CONFIG FILE ERROR" not in output
