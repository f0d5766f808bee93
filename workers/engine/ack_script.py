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

The script checks every key's type before it writes anything, as the publish script
does: Redis does not undo a script that fails halfway, and a failed call is sent
again whole (ack_batch.py), which would count twice what the first half wrote.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from bus.partitions import Partition
from workers.engine.resp import bulk

# KEYS, per block: stream, counters hash, retry times, paused runs, then the ledger of each
# redelivered entry. ARGV: group, then per block: how many ids, counters and redelivered
# entries; the ids; counter/increment pairs; the redelivered entries' ids. Returns how many
# entries XACK acknowledged.
ACKS_SCRIPT = """
local group = ARGV[1]
local function walk(visit)
  local k, a = 1, 2
  while a <= #ARGV do
    local n_ids, n_counts, n_re = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
    visit(k, a + 3, n_ids, n_counts, n_re)
    k = k + 4 + n_re
    a = a + 3 + n_ids + 2 * n_counts + n_re
  end
end
local function check(key, want)
  local kind = redis.call('TYPE', key)['ok']
  if kind ~= 'none' and kind ~= want then
    error(redis.error_reply('WRONGTYPE ' .. key .. ' is a ' .. kind .. ', not a ' .. want))
  end
end
walk(function(k, i, n_ids, n_counts, n_re)
  if n_ids > 0 then check(KEYS[k], 'stream') end
  if n_counts > 0 then check(KEYS[k + 1], 'hash') end
  if n_re > 0 then check(KEYS[k + 2], 'hash'); check(KEYS[k + 3], 'hash') end
end)
local acked = 0
walk(function(k, i, n_ids, n_counts, n_re)
  if n_ids > 0 then acked = acked + redis.call('XACK', KEYS[k], group, unpack(ARGV, i, i + n_ids - 1)) end
  i = i + n_ids
  for c = i, i + 2 * n_counts - 1, 2 do redis.call('HINCRBY', KEYS[k + 1], ARGV[c], ARGV[c + 1]) end
  i = i + 2 * n_counts
  if n_re > 0 then
    redis.call('DEL', unpack(KEYS, k + 4, k + 3 + n_re))
    redis.call('HDEL', KEYS[k + 2], unpack(ARGV, i, i + n_re - 1))
    redis.call('HDEL', KEYS[k + 3], unpack(ARGV, i, i + n_re - 1))
  end
end)
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
    return [block.stream, part.pool_stats(pool), part.retry_at(pool), part.uncounted(pool),
            *(ledger for _, ledger in block.redelivered)]


def block_args(block: Block) -> list[Any]:
    return [len(block.ids), len(block.counts), len(block.redelivered), *block.ids,
            *(item for pair in block.counts.items() for item in pair), *(entry_id for entry_id, _ in block.redelivered)]


# The counts in a block's header and its increments are small numbers: packed once.
_SMALL = [bulk(n) for n in range(BLOCK_IDS + 1)]


def _number(n: int) -> bytes:
    return _SMALL[n] if 0 <= n <= BLOCK_IDS else bulk(n)


def _ids(ids: list[str]) -> bytes:
    """Stream entry ids (ASCII: as many bytes as characters) as RESP bulk strings."""
    return "".join([f"${len(i)}\r\n{i}\r\n" for i in ids]).encode()


class Packer:
    """The EVALSHA of a flush in RESP, written here rather than by redis-py.

    redis-py encodes each argument on its own (~2 us each); a flush over 64 partitions has
    ~10 per partition. Each stream's four keys are packed once and kept; ids and counts are
    packed per flush.
    """

    def __init__(self, pool: str, group: str, sha: str) -> None:
        self.pool = pool
        self._head = bulk("EVALSHA") + bulk(sha)
        self._group = bulk(group)
        self._keys: dict[str, bytes] = {}
        self._counters: dict[str, bytes] = {}

    def _packed_keys(self, block: Block) -> bytes:
        packed = self._keys.get(block.stream)
        if packed is None:
            if len(self._keys) >= 4096:  # streams change only with the layout: a guard, not a cache policy
                self._keys.clear()
            packed = self._keys[block.stream] = b"".join(bulk(k) for k in block_keys(self.pool, block)[:4])
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
            keys.append(self._packed_keys(block))
            n_keys += 4
            args += (_number(len(block.ids)), _number(len(block.counts)), _number(len(block.redelivered)),
                     _ids(block.ids))
            for counter, n in block.counts.items():
                args += (self._counter(counter), _number(n))
            n_args += 3 + len(block.ids) + 2 * len(block.counts)
            if block.redelivered:
                keys.extend(bulk(ledger) for _, ledger in block.redelivered)
                args.append(_ids([entry_id for entry_id, _ in block.redelivered]))
                n_keys += len(block.redelivered)
                n_args += len(block.redelivered)
        return b"".join((b"*%d\r\n" % (3 + n_keys + n_args), self._head, bulk(n_keys), *keys, *args))

