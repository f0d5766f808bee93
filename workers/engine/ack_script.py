"""One script acks a flush's entries on every partition they came from, and counts them.

A flush (ack_batch.py) holds, per stream, the entries to ack, the counter increments
of that stream's partition, and the redelivered entries whose ledger, retry time and
paused runs are to be forgotten. Sent as one XACK and one HINCRBY per stream, a
flush over 64 partitions was ~128 commands for ~80 entries, and redis-py's cost per
command (packing, reading, a timeout each) was most of the consumer's CPU. Here each
stream is one *block* of one script call:

* on a single Redis, every block goes in ONE call (a script may name keys of any
  slot there): one command per flush, however many partitions;
* on a Redis Cluster, one call per block, since a block's keys share its partition's
  hash tag (one slot); the cluster pipeline sends each node its calls at once.

Redis does not undo a script that fails halfway, and a failed call is sent again
whole (ack_batch.py): the script checks the type of every hash it writes before it
writes anything, and acks (which a second call does not repeat) before it counts.
So a failed call has counted nothing, and the one that succeeds counts once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from bus.partitions import Partition
from workers.engine.resp import bulk

# KEYS, per block: stream, counters hash, and only when it has redelivered entries: retry times,
# paused runs, the ledger of each. ARGV: group, then per block: how many ids, counters and
# redelivered entries; the ids; counter/increment pairs; the redelivered entries' ids.
# Returns how many entries XACK acknowledged.
ACKS_SCRIPT = """
local group = ARGV[1]
local blocks = {}
local k, a = 1, 2
while a <= #ARGV do
  local b = {k = k, ids = a + 3, n_ids = tonumber(ARGV[a]), n_counts = tonumber(ARGV[a + 1]),
             n_re = tonumber(ARGV[a + 2])}
  b.counts = b.ids + b.n_ids
  b.re = b.counts + 2 * b.n_counts
  blocks[#blocks + 1] = b
  k = k + 2 + (b.n_re > 0 and 2 + b.n_re or 0)
  a = b.re + b.n_re
end
local function check(key)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'none' and kind ~= 'hash' then
    error(redis.error_reply('WRONGTYPE ' .. key .. ' is a ' .. kind .. ', not a hash'))
  end
end
-- 1. Every hash written below is one (or missing): a wrong type fails here, before any write.
for _, b in ipairs(blocks) do
  if b.n_counts > 0 then check(KEYS[b.k + 1]) end
  if b.n_re > 0 then check(KEYS[b.k + 2]); check(KEYS[b.k + 3]) end
end
-- 2. The acks. Should one fail (a stream replaced by another type), nothing is counted yet,
-- and the call sent again acks nothing twice: XACK of an acked entry does nothing.
local acked = 0
for _, b in ipairs(blocks) do
  if b.n_ids > 0 then acked = acked + redis.call('XACK', KEYS[b.k], group, unpack(ARGV, b.ids, b.counts - 1)) end
end
-- 3. The counts, then what redelivered entries' earlier attempts left.
for _, b in ipairs(blocks) do
  for c = b.counts, b.re - 1, 2 do redis.call('HINCRBY', KEYS[b.k + 1], ARGV[c], ARGV[c + 1]) end
  if b.n_re > 0 then
    redis.call('DEL', unpack(KEYS, b.k + 4, b.k + 3 + b.n_re))
    redis.call('HDEL', KEYS[b.k + 2], unpack(ARGV, b.re, b.re + b.n_re - 1))
    redis.call('HDEL', KEYS[b.k + 3], unpack(ARGV, b.re, b.re + b.n_re - 1))
  end
end
return acked
"""

ACKS_SHA = hashlib.sha1(ACKS_SCRIPT.encode()).hexdigest()

# Lua's unpack() takes at most ~8000 values: a stream's ids are split into blocks of this many.
BLOCK_IDS = 1000


@dataclass
class Block:
    """What one flush does to one stream and its partition's keys."""

    stream: str
    part: Partition
    ids: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    # (entry id, ledger key) of entries a previous attempt may have left a ledger or retry time for.
    redelivered: list[tuple[str, str]] = field(default_factory=list)

    def chunks(self) -> list[Block]:
        """This block split so that no unpack() in the script exceeds BLOCK_IDS values."""
        if len(self.ids) <= BLOCK_IDS and len(self.redelivered) <= BLOCK_IDS:
            return [self]
        out = [Block(self.stream, self.part, counts=self.counts)]
        for i in range(0, max(len(self.ids), len(self.redelivered)), BLOCK_IDS):
            if i:
                out.append(Block(self.stream, self.part))
            out[-1].ids = self.ids[i:i + BLOCK_IDS]
            out[-1].redelivered = self.redelivered[i:i + BLOCK_IDS]
        return out


def acks_call(pool: str, group: str, blocks: list[Block]) -> list[Any]:
    """EVAL's arguments after the script: the key count, the KEYS, the ARGV of `blocks` (for redis-py)."""
    keys: list[str] = []
    args: list[Any] = [group]
    for block in blocks:
        keys += block_keys(pool, block)
        args += block_args(block)
    return [len(keys), *keys, *args]


def block_keys(pool: str, block: Block) -> list[str]:
    part = block.part
    if not block.redelivered:
        return [block.stream, part.pool_stats(pool)]
    return [block.stream, part.pool_stats(pool), part.retry_at(pool), part.uncounted(pool),
            *(ledger for _, ledger in block.redelivered)]


def block_args(block: Block) -> list[Any]:
    return [len(block.ids), len(block.counts), len(block.redelivered), *block.ids,
            *(item for pair in block.counts.items() for item in pair), *(entry_id for entry_id, _ in block.redelivered)]


# The counts in a block's header and its increments are small numbers: packed once.
_SMALL = [bulk(n) for n in range(1001)]


def _number(n: int) -> bytes:
    return _SMALL[n] if 0 <= n <= 1000 else bulk(n)


def _ids(ids: list[str]) -> bytes:
    """Stream entry ids (ASCII: as many bytes as characters) as RESP bulk strings."""
    return "".join([f"${len(i)}\r\n{i}\r\n" for i in ids]).encode()


class Packer:
    """The EVALSHA of a flush in RESP, written here rather than by redis-py.

    redis-py encodes each argument on its own (~2 us each); a flush over 64 partitions has
    ~6 per partition. Each stream's keys are packed once and kept; ids and counts per flush.
    """

    def __init__(self, pool: str, group: str, sha: str) -> None:
        self.pool = pool
        self._head = bulk("EVALSHA") + bulk(sha)
        self._group = bulk(group)
        # stream -> (stream and counters keys, retry times and paused runs keys), packed.
        self._keys: dict[str, tuple[bytes, bytes]] = {}
        self._counters: dict[str, bytes] = {}

    def _packed_keys(self, block: Block) -> tuple[bytes, bytes]:
        packed = self._keys.get(block.stream)
        if packed is None:
            if len(self._keys) >= 4096:  # streams change only with the layout: a guard, not a cache policy
                self._keys.clear()
            part, pool = block.part, self.pool
            packed = self._keys[block.stream] = (bulk(block.stream) + bulk(part.pool_stats(pool)),
                                                 bulk(part.retry_at(pool)) + bulk(part.uncounted(pool)))
        return packed

    def _counter(self, name: str) -> bytes:
        packed = self._counters.get(name)
        if packed is None:
            packed = self._counters[name] = bulk(name)
        return packed

    def pack(self, blocks: list[Block]) -> bytes:
        n_keys, n_args = 0, 1
        keys: list[bytes] = []
        args: list[bytes] = [self._group]
        for block in blocks:
            ids, counts, redelivered = block.ids, block.counts, block.redelivered
            always, on_redelivery = self._packed_keys(block)
            keys.append(always)
            args += (_number(len(ids)), _number(len(counts)), _number(len(redelivered)), _ids(ids))
            for counter, n in counts.items():
                args += (self._counter(counter), _number(n))
            n_keys += 2
            n_args += 3 + len(ids) + 2 * len(counts)
            if redelivered:
                keys.append(on_redelivery)
                keys.extend(bulk(ledger) for _, ledger in redelivered)
                args.append(_ids([entry_id for entry_id, _ in redelivered]))
                n_keys += 2 + len(redelivered)
                n_args += len(redelivered)
        return b"".join((b"*%d\r\n" % (3 + n_keys + n_args), self._head, bulk(n_keys), *keys, *args))
