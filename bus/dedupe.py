"""The dedupe record of an event: small hash fields in time-sliced, digest-bucketed hashes.

A key per event id (``SET seen:<id> NX EX``) cost 88 to 122 bytes of Redis memory
per event; most of it is the key's own bookkeeping (its dict entry, object header,
name and expiry entry). Here an event is one field of a small hash instead:

* the field is an 8-byte digest of the event id (BLAKE2b), and its value the 4-byte
  CRC-32 of the event's partition key, so `fanout partitions resize` can find the
  record's partition in any layout (``crc % N``, as bus.partitions.partition_of);
* the hash is one of ``seen_buckets`` sub-buckets (chosen by other bits of the
  same digest) of one time slice (``slice_s``, a day by default) of the event's
  partition: ``{prefix:p}:seen:<slice>:<bucket>``, so the publish stays in one slot;
* each slice's hashes expire as a whole, ``retention_s`` after the slice ends, so a
  record lives at least ``retention_s`` and at most ``retention_s + slice_s``;
* the publish script looks the field up in the current slice and every earlier one
  that may still be live (``lookback_slices``), and writes it to the current one.

A hash of at most 128 fields (Redis's default ``hash-max-listpack-entries``) whose
fields and values are short is stored as one listpack: 8 + 4 bytes of data and 4 of
framing per event, plus the key's overhead shared by every event of its sub-bucket.
Past 128 fields Redis converts the hash to a hashtable (about 70 bytes per field):
still correct, just larger, so size ``seen_buckets`` to the traffic (README).

Two event ids share a field only if 64 bits of their digests agree and they fall
in the same partition, slice and sub-bucket: with at most ~1,000 fields looked at
per publish, the chance that a new event is taken for a duplicate is about 1e-16.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from typing import NamedTuple

from bus.keys import Keys

DIGEST_BYTES = 8
# Digest bytes after the field's that pick the sub-bucket (independent of the field's bits).
_BUCKET_BYTES = 4
_DIGEST_SIZE = DIGEST_BYTES + _BUCKET_BYTES


class SeenRecord(NamedTuple):
    """Where and what one event's dedupe record is (a tuple: it is built on every publish)."""

    bucket: int  # the sub-bucket within each slice
    field: bytes  # DIGEST_BYTES of the event id's digest
    value: bytes  # the 4-byte big-endian CRC-32 of the partition key
    crc: int  # the same CRC-32, as a number (partition = crc % N)


def seen_record(event_id: str, partition_key: str, buckets: int) -> SeenRecord:
    """The dedupe record of an event id, whose partition key is `partition_key`."""
    digest = hashlib.blake2b(event_id.encode(), digest_size=_DIGEST_SIZE).digest()
    crc = zlib.crc32(partition_key.encode())
    return SeenRecord(int.from_bytes(digest[DIGEST_BYTES:], "big") % buckets, digest[:DIGEST_BYTES],
                      crc.to_bytes(4, "big"), crc)


def crc_of_value(value: bytes) -> int | None:
    """The partition key's CRC-32 held by a record's value; None for a value that is not one."""
    return int.from_bytes(value, "big") if len(value) == 4 else None


def slice_of(now_ms: int, slice_s: int) -> int:
    """The time slice `now_ms` falls in: whole slices since the Unix epoch."""
    return now_ms // (1000 * slice_s)


def lookback_slices(retention_s: int, slice_s: int) -> int:
    """How many slices (the current one included) a lookup reads so every record younger than
    `retention_s` is found: the ones whose hashes may not have expired yet."""
    return math.ceil(retention_s / slice_s) + 1


def expires_at_s(slice_index: int, slice_s: int, retention_s: int) -> int:
    """When the hashes of a slice expire (Unix seconds): `retention_s` after the slice ends."""
    return (slice_index + 1) * slice_s + retention_s


def lookup_keys(keys: Keys, record: SeenRecord, p: int, now_ms: int, *, retention_s: int,
                slice_s: int) -> list[str]:
    """The hashes that may hold `record` in partition p now, current slice first (what the
    publish script reads); for checks outside the script, such as `fanout reconcile --dry-run`."""
    current = slice_of(now_ms, slice_s)
    return [keys.seen(current - i, record.bucket, p) for i in range(lookback_slices(retention_s, slice_s))]
