"""TF Serving's warm-up file read without TensorFlow: the same records as `tf.data`, and the
same refusals (with TensorFlow's messages) for every way a file can be damaged."""

from __future__ import annotations

import pytest

from sealserve.errors import Code
from sealserve.serving import tfrecord
from sealserve.serving.tensorflow_runtime import import_tensorflow
from tests.tfrecords import record_file

PAYLOADS = [b"hello world", b"", b"x" * 70000]


def _tensorflow_reads(path) -> tuple[list[bytes], str]:
    """What tf.data reads from `path`: the records before it stopped, and why ("" at EOF)."""
    tf = import_tensorflow()
    records: list[bytes] = []
    try:
        for record in tf.data.TFRecordDataset(str(path)):
            records.append(record.numpy())
    except tf.errors.DataLossError as exc:
        return records, exc.message
    return records, ""


def _ours(data: bytes) -> tuple[list[bytes], str]:
    records: list[bytes] = []
    try:
        for record in tfrecord.records(data):
            records.append(record)
    except tfrecord.CorruptRecord as exc:
        assert exc.code == Code.DATA_LOSS
        return records, str(exc)
    return records, ""


def test_the_file_is_what_tensorflows_writer_writes(tmp_path):
    tf = import_tensorflow()
    path = tmp_path / "records"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for payload in PAYLOADS:
            writer.write(payload)
    assert record_file(PAYLOADS) == path.read_bytes()
    assert list(tfrecord.records(bytearray(path.read_bytes()))) == PAYLOADS


def _flip(offset: int):
    def damage(data: bytes) -> bytes:
        return data[:offset] + bytes([data[offset] ^ 0x10]) + data[offset + 1 :]

    return damage


# the first record: header 0-11 (length 0-7, its CRC 8-11), data 12-22, data CRC 23-26
DAMAGES = {
    "empty": lambda data: b"",
    "a partial header at the end": lambda data: data[: 27 + 11],
    "a header only": lambda data: data[:12],
    "data cut short": lambda data: data[:20],
    "data without its CRC": lambda data: data[:25],
    "the last record cut short": lambda data: data[:-1],
    "a length bit": _flip(3),
    "a length CRC bit": _flip(9),
    "a data bit": _flip(14),
    "a data CRC bit": _flip(24),
    "a data bit of the second record": _flip(27 + 12 + 0 + 4),
    "a length beyond the file": lambda data: (1 << 40).to_bytes(8, "little") + data[8:],
    "not a TFRecord file": lambda data: b"not a TFRecord file at all",
}


@pytest.mark.integration  # TensorFlow reads the same files
@pytest.mark.parametrize("damage", list(DAMAGES), ids=list(DAMAGES))
def test_damaged_files_are_read_and_refused_as_tensorflow_does(tmp_path, damage):
    data = DAMAGES[damage](record_file(PAYLOADS))
    path = tmp_path / "records"
    path.write_bytes(data)
    expected_records, tensorflow_says = _tensorflow_reads(path)
    records, we_say = _ours(data)
    assert records == expected_records
    # TensorFlow's words ("corrupted record at 12"), without its op's name around them
    assert bool(we_say) == bool(tensorflow_says)
    assert we_say.split(" (")[0].lower() in tensorflow_says.lower()


def test_records_round_trip_and_a_bad_crc_is_data_loss():
    data = record_file(PAYLOADS)
    assert list(tfrecord.records(data)) == PAYLOADS
    assert list(tfrecord.records(memoryview(bytearray(data)))) == PAYLOADS
    with pytest.raises(tfrecord.CorruptRecord, match="^corrupted record at 12$") as caught:
        list(tfrecord.records(_flip(14)(data)))
    assert caught.value.code == Code.DATA_LOSS
