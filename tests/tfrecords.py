"""TFRecord files for tests (the product only reads them: `serving/tfrecord.py`)."""

from __future__ import annotations

import struct

from sealserve.serving.tfrecord import masked_crc32c

_LENGTH, _CRC = struct.Struct("<Q"), struct.Struct("<I")


def record_file(payloads: list[bytes]) -> bytes:
    """A TFRecord file of `payloads` (what `tf.io.TFRecordWriter` writes)."""
    parts = []
    for payload in payloads:
        header = _LENGTH.pack(len(payload))
        parts += [header, _CRC.pack(masked_crc32c(header))]
        parts += [payload, _CRC.pack(masked_crc32c(payload))]
    return b"".join(parts)
