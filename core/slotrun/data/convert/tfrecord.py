"""A minimal TFRecord reader and tf.train.Example parser, without TensorFlow.

TFRecord file format (public, tensorflow/core/lib/io/record_writer.cc): a sequence of records, each

    uint64 length            little-endian
    uint32 masked_crc32c(length bytes)
    byte   data[length]
    uint32 masked_crc32c(data)

where masked_crc32c(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2^32) of the CRC-32C (Castagnoli) of x.
Files may be GZIP-compressed as a whole (the DeepMind multi_object_datasets files are); `compression="auto"`
detects the gzip magic bytes. Reading streams: one record in memory at a time.

tf.train.Example (tensorflow/core/example/{example,feature}.proto, proto3): Example{Features features = 1},
Features{map<string, Feature> feature = 1}, Feature{oneof kind {BytesList bytes_list = 1; FloatList float_list = 2;
Int64List int64_list = 3}}, with `repeated bytes/float/int64 value = 1` (the numeric ones packed). The message
classes are built here from those descriptors in a private protobuf descriptor pool (the installed tensorboard
no longer ships example_pb2, and a private pool cannot clash with TensorFlow's own classes if it is installed);
they read and write the same bytes as tf.train.Example.

CRC-32C comes from `google-crc32c` (compiled C).
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import google_crc32c
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from slotrun.data.convert.common import bad, need

# ---- tf.train.Example message classes -----------------------------------------------------------------------


def _example_classes() -> dict[str, type]:
    fd = descriptor_pb2.FileDescriptorProto(name="slotrun/tf_example.proto", package="tensorflow", syntax="proto3")
    F = descriptor_pb2.FieldDescriptorProto
    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    for name, typ in (("BytesList", F.TYPE_BYTES), ("FloatList", F.TYPE_FLOAT), ("Int64List", F.TYPE_INT64)):
        fd.message_type.add(name=name).field.add(name="value", number=1, type=typ, label=rep)
    feature = fd.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, (name, ref) in enumerate((("bytes_list", "BytesList"), ("float_list", "FloatList"),
                                          ("int64_list", "Int64List")), start=1):
        feature.field.add(name=name, number=number, type=F.TYPE_MESSAGE, label=opt, type_name=f".tensorflow.{ref}",
                          oneof_index=0)
    features = fd.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=opt)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=opt, type_name=".tensorflow.Feature")
    features.field.add(name="feature", number=1, type=F.TYPE_MESSAGE, label=rep,
                       type_name=".tensorflow.Features.FeatureEntry")
    fd.message_type.add(name="Example").field.add(name="features", number=1, type=F.TYPE_MESSAGE, label=opt,
                                                  type_name=".tensorflow.Features")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{name}"))
            for name in ("Example", "Features", "Feature", "BytesList", "FloatList", "Int64List")}


_CLASSES = _example_classes()
Example = _CLASSES["Example"]
Feature = _CLASSES["Feature"]
BytesList, FloatList, Int64List = _CLASSES["BytesList"], _CLASSES["FloatList"], _CLASSES["Int64List"]

# ---- CRC-32C --------------------------------------------------------------------------------------------


def crc32c(data: bytes | memoryview) -> int:
    return int(google_crc32c.value(bytes(data)))


def masked_crc(data: bytes | memoryview) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ---- records --------------------------------------------------------------------------------------------

COMPRESSIONS = ("auto", "gzip", "none")


def _open(path: Path, compression: str):
    raw = open(path, "rb")
    if compression == "auto":
        compression = "gzip" if raw.read(2) == b"\x1f\x8b" else "none"
        raw.seek(0)
    if compression == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    if compression != "none":
        raw.close()
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    return raw, raw


def read_records(path: str | Path, *, compression: str = "auto", verify: bool = True) -> Iterator[bytes]:
    """The records of one TFRecord file, streamed. Damage (truncation, a CRC mismatch, bad gzip) is a
    UserError naming the file and the record number (counted from 0)."""
    path = need(Path(path), "TFRecord file")
    f, raw = _open(path, compression)
    number = 0
    try:
        while True:
            try:
                head = f.read(12)
                if not head:
                    return
                if len(head) < 12:
                    raise bad(path, "truncated record header", number)
                length, length_crc = struct.unpack("<QI", head)
                if verify and masked_crc(head[:8]) != length_crc:
                    raise bad(path, "length CRC mismatch (corrupt or not a TFRecord file)", number)
                if length > 1 << 34:
                    raise bad(path, f"implausible record length {length}", number)
                data = f.read(length)
                tail = f.read(4)
                if len(data) < length or len(tail) < 4:
                    raise bad(path, "truncated record", number)
                if verify and masked_crc(data) != struct.unpack("<I", tail)[0]:
                    raise bad(path, "data CRC mismatch (corrupt record)", number)
            except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
                raise bad(path, f"cannot read ({exc})", number) from exc
            yield data
            number += 1
    finally:
        f.close()
        raw.close()


def write_records(path: str | Path, records, *, gzip_compress: bool = False) -> None:
    """Write records as a TFRecord file (for tests and small tools)."""
    out = io.BytesIO()
    for data in records:
        head = struct.pack("<Q", len(data))
        out.write(head + struct.pack("<I", masked_crc(head)) + data + struct.pack("<I", masked_crc(data)))
    payload = out.getvalue()
    if gzip_compress:
        payload = gzip.compress(payload, mtime=0)
    Path(path).write_bytes(payload)


# ---- tf.train.Example -----------------------------------------------------------------------------------


def parse_example(data: bytes) -> dict[str, object]:
    """name -> value of a serialized tf.train.Example: float_list -> float32 array, int64_list -> int64 array,
    bytes_list -> list of bytes. Raises ValueError on a malformed message."""
    try:
        example = Example.FromString(data)
    except DecodeError as exc:
        raise ValueError(f"not a tf.train.Example ({exc})") from exc
    out: dict[str, object] = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "float_list":
            out[name] = np.asarray(feature.float_list.value, np.float32)
        elif kind == "int64_list":
            out[name] = np.asarray(feature.int64_list.value, np.int64)
        elif kind == "bytes_list":
            out[name] = _BytesFeature(feature.bytes_list)
        else:
            out[name] = np.zeros(0, np.float32)
    return out


class _BytesFeature:
    """A bytes_list, decoded lazily: most multi_object_datasets features store one byte per element."""

    def __init__(self, message) -> None:
        self.message = message

    def __len__(self) -> int:
        return len(self.message.value)

    def values(self) -> list[bytes]:
        return list(self.message.value)

    def uint8(self) -> np.ndarray:
        """The elements as one uint8 array: each element's bytes concatenated (tf.io.decode_raw, then squeeze)."""
        wire = np.frombuffer(self.message.SerializeToString(), np.uint8)
        # fast path: every element is 1 byte, so the wire form is (tag 0x0a, length 1, byte) repeated
        if len(wire) % 3 == 0 and (wire[0::3] == 0x0A).all() and (wire[1::3] == 1).all():
            return wire[2::3].copy()
        return np.frombuffer(b"".join(self.message.value), np.uint8).copy()


def make_example(features: dict[str, object]) -> bytes:
    """Serialize a tf.train.Example: float arrays -> float_list, integer arrays -> int64_list, bytes or a list
    of bytes -> bytes_list (for tests and tools)."""
    example = Example()
    for name, value in features.items():
        feature = example.features.feature[name]
        if isinstance(value, (bytes, bytearray)):
            feature.bytes_list.value.append(bytes(value))
        elif isinstance(value, list) and (not value or isinstance(value[0], (bytes, bytearray))):
            feature.bytes_list.value.extend(bytes(v) for v in value)
        else:
            array = np.asarray(value)
            if array.dtype.kind == "f":
                feature.float_list.value.extend(array.ravel().astype(np.float32).tolist())
            else:
                feature.int64_list.value.extend(array.ravel().astype(np.int64).tolist())
    return example.SerializeToString()


def uint8_bytes_list(array: np.ndarray) -> list[bytes]:
    """An array as the multi_object_datasets store images: one 1-byte string per element (row-major)."""
    flat = np.ascontiguousarray(array, np.uint8).ravel().tobytes()
    return [flat[i:i + 1] for i in range(len(flat))]


__all__ = ["COMPRESSIONS", "BytesList", "Example", "Feature", "FloatList", "Int64List", "crc32c",
           "make_example", "masked_crc", "parse_example", "read_records", "uint8_bytes_list", "write_records"]
