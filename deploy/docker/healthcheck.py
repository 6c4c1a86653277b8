"""Container health check for the sealserve images (Docker HEALTHCHECK; standard library only).

GET `SEALSERVE_HEALTH_URL` and exit 0 when it answers 200 (or, with
`SEALSERVE_HEALTH_ANY_STATUS=1`, any HTTP answer below 500: for a service without a health
path), 1 otherwise.

TLS: the server's REST port speaks TLS whenever `--ssl_config_file` is given.
- `SEALSERVE_HEALTH_CA`: the CA to verify the server's certificate with. Without it the
  certificate is not verified: the probe connects to this container's own loopback address and
  sends nothing secret, it only asks whether the server is up.
- `SEALSERVE_HEALTH_CERT` / `SEALSERVE_HEALTH_KEY`: a client certificate, needed when ssl.cfg
  has `client_verify: true` (mutual TLS refuses every client without one, probes included).
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "https://127.0.0.1:8501/v1/health/ready"
TIMEOUT_SECONDS = 5.0


def _context(url: str) -> ssl.SSLContext | None:
    if not url.startswith("https:"):
        return None
    ca = os.environ.get("SEALSERVE_HEALTH_CA")
    if ca:
        context = ssl.create_default_context(cafile=ca)
        context.check_hostname = False  # loopback: the certificate names the service instead
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    cert = os.environ.get("SEALSERVE_HEALTH_CERT")
    if cert:
        context.load_cert_chain(cert, os.environ.get("SEALSERVE_HEALTH_KEY") or None)
    return context


def check(url: str, *, any_status: bool = False) -> tuple[bool, str]:
    """(healthy, what was seen)."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS, context=_context(url)) as answer:
            status = answer.status
    except urllib.error.HTTPError as err:
        status = err.code
    except (OSError, ValueError) as err:
        return False, f"{url}: {err}"
    healthy = status < 500 if any_status else status == 200
    return healthy, f"{url}: HTTP {status}"


def main() -> int:
    url = os.environ.get("SEALSERVE_HEALTH_URL", DEFAULT_URL)
    healthy, seen = check(url, any_status=os.environ.get("SEALSERVE_HEALTH_ANY_STATUS") == "1")
    print(("healthy: " if healthy else "unhealthy: ") + seen)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
