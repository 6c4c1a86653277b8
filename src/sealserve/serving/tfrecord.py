"""TFRecord files (TF Serving's warm-up file) read without TensorFlow.

A record is a little-endian uint64 length, the masked CRC32C of those 8 bytes, the data, and
the masked CRC32C of the data (`tensorflow/core/lib/io/record_writer.cc`). `records` checks
them as TensorFlow's reader does (`tf.data.TFRecordDataset`, which TF Serving's warm-up uses),
with its messages: a CRC that does not match is "corrupted record at OFFSET", a file that
ends inside a record's data "truncated record at OFFSET" (both DATA_LOSS); a file that ends
before a whole header (12 bytes) ends the records. Pure: bytes in, bytes out; CRC32C by
`google-crc32c` (Google's C implementation).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import google_crc32c

from sealserve.errors import Code, SealserveError

_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
HEADER_BYTES = _LENGTH.size + _CRC.size
_MASK_DELTA = 0xA282EAD8


class CorruptRecord(SealserveError):
    """A record whose framing or checksum is wrong (TensorFlow's DataLossError)."""

    code = Code.DATA_LOSS


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC32C, rotated and offset (`crc32c::Mask`)."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def records(data: bytes | bytearray | memoryview) -> Iterator[bytes]:
    """Each record's data, checked; raises CorruptRecord at the first bad one."""
    view = memoryview(data).cast("B")
    offset = 0
    while len(view) - offset >= HEADER_BYTES:
        header = bytes(view[offset : offset + _LENGTH.size])
        (crc,) = _CRC.unpack_from(view, offset + _LENGTH.size)
        if masked_crc32c(header) != crc:
            raise CorruptRecord(f"corrupted record at {offset} (is this even a TFRecord file?)")
        (length,) = _LENGTH.unpack(header)
        start = offset + HEADER_BYTES
        if len(view) - start < length + _CRC.size:
            raise CorruptRecord(f"truncated record at {offset}")
        record = bytes(view[start : start + length])
        (crc,) = _CRC.unpack_from(view, start + length)
        if masked_crc32c(record) != crc:
            raise CorruptRecord(f"corrupted record at {start}")
        yield record
        offset = start + length + _CRC.size
