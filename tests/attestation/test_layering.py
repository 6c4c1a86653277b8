"""DESIGN.md: the security core never imports TensorFlow, gRPC or a web framework."""

from __future__ import annotations

import subprocess
import sys


def test_attestation_imports_no_framework() -> None:
    code = (
        "import sys, sealserve.attestation\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'tensorflow', 'grpc', 'aiohttp', 'tensorflow_serving', 'numpy'} "
        "or (m.startswith('sealserve.') and m.split('.')[1] not in "
        "{'attestation', 'errors', 'fsio'}))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
