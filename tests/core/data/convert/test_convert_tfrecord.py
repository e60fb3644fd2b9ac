"""The TFRecord reader: masked CRC-32C (google-crc32c), gzip, damage reported with file and record number;
Example parsing."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from slotrun.data.convert import tfrecord as tfr
from slotrun.errors import UserError


def test_masked_crc32c_known_values():
    assert tfr.crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    assert tfr.crc32c(b"") == 0
    assert tfr.crc32c(memoryview(b"123456789")[:4]) == tfr.crc32c(b"1234")
    # TFRecord's mask: rotate right by 15 bits, add 0xa282ead8 (record_writer.cc)
    crc = 0xE3069283
    assert tfr.masked_crc(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_records_round_trip_plain_and_gzip(tmp_path):
    records = [b"", b"abc", bytes(range(256)) * 40]
    for gz in (False, True):
        path = tmp_path / f"r{gz}.tfrecord"
        tfr.write_records(path, records, gzip_compress=gz)
        assert (path.read_bytes()[:2] == b"\x1f\x8b") == gz
        assert list(tfr.read_records(path)) == records
    # the on-disk framing, byte for byte: length, masked crc of the length, data, masked crc of the data
    raw = (tmp_path / "rFalse.tfrecord").read_bytes()
    assert raw[:8] == struct.pack("<Q", 0) and raw[8:12] == struct.pack("<I", tfr.masked_crc(raw[:8]))


def test_damage_names_file_and_record(tmp_path):
    path = tmp_path / "bad.tfrecord"
    tfr.write_records(path, [b"first", b"second", b"third"])
    raw = bytearray(path.read_bytes())
    second = 12 + 5 + 4  # start of record 1
    raw[second + 12] ^= 0xFF  # flip a data byte of record 1
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"bad\.tfrecord, record 1: data CRC mismatch"):
        list(tfr.read_records(path))
    assert len(list(tfr.read_records(path, verify=False))) == 3
    path.write_bytes(bytes(raw[: second + 14]))  # truncated inside record 1
    with pytest.raises(UserError, match=r"record 1: truncated"):
        list(tfr.read_records(path, verify=False))
    path.write_bytes(gzip.compress(b"x" * 30)[:-6])  # broken gzip stream
    with pytest.raises(UserError, match=r"bad\.tfrecord, record 0"):
        list(tfr.read_records(path))
    with pytest.raises(UserError, match="missing TFRecord file"):
        list(tfr.read_records(tmp_path / "nope.tfrecord"))


def test_example_matches_the_tf_wire_format():
    # tf.train.Example{features{feature{key: "v" value{float_list{value: [1.5]}}}}} encoded by hand (proto3
    # packed floats): Example.features = 1, Features.feature = 1 (map entry: key 1, value 2),
    # Feature.float_list = 2, FloatList.value = 1 packed.
    floats = b"\x0a\x04" + struct.pack("<f", 1.5)
    feature = b"\x12" + bytes([len(floats)]) + floats
    entry = b"\x0a\x01v" + b"\x12" + bytes([len(feature)]) + feature
    features = b"\x0a" + bytes([len(entry)]) + entry
    wire = b"\x0a" + bytes([len(features)]) + features
    parsed = tfr.parse_example(wire)
    assert parsed["v"].tolist() == [1.5]
    assert tfr.make_example({"v": np.array([1.5], np.float32)}) == wire
    data = tfr.make_example({"img": tfr.uint8_bytes_list(np.arange(6, dtype=np.uint8)), "n": np.array([3, -1]),
                             "s": [b"ab", b"c"]})
    parsed = tfr.parse_example(data)
    assert parsed["img"].uint8().tolist() == list(range(6))
    assert parsed["n"].tolist() == [3, -1] and parsed["s"].values() == [b"ab", b"c"]
    assert parsed["s"].uint8().tolist() == [97, 98, 99]
    with pytest.raises(ValueError, match="not a tf.train.Example"):
        tfr.parse_example(b"\x0a\xff\xff")
