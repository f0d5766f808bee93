"""Redis memory per event: the dedupe record and the retained stream entry, as bytes freed.

Each figure is INFO memory's used_memory just before and just after deleting the keys
written, in one MULTI (so nothing else the server does falls in between), divided by
the events written. Uses BENCH_REDIS_URL (default redis://127.0.0.1:6379/12) under a
fresh key prefix and deletes only its own keys; the server's configuration is only read.

1. Dedupe, at 100,000 events (BENCH_DEDUPE_EVENTS): the key per event of earlier
   versions (SET seen:<id> <object id> EX) against the hash records (bus/dedupe.py),
   written by the real publish script, with the default SEEN_BUCKETS and with fewer
   sub-buckets (hashes past the server's hash-max-listpack-entries). Target <= 64 B.
2. A stream entry, at 20,000 entries (BENCH_STREAM_ENTRIES) of pretty-printed Stripe
   events of about 1, 2, 3 and 4 KB: the raw body of earlier versions against what
   the publish script writes now (LZ4), as a ratio to the payload. Target <= 1.3.
3. For each size, the codecs weighed: the compressed size and the CPU per body for
   LZ4 (used), zstd level 1 and zlib level 1 (the standard library's).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import sys
import time
import uuid
import zlib
from typing import Any

import lz4.frame
import orjson
import redis
import redis.asyncio as aioredis
import zstandard

from bus import defaults
from bus.envelope import encode_body, entry_fields
from bus.keys import Keys
from bus.routing import parse_routing
from fanout.samples import sample_event
from ingress.parse import routing_fields
from ingress.publish import Publisher

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
DEDUPE_EVENTS = int(os.environ.get("BENCH_DEDUPE_EVENTS", "100000"))
STREAM_ENTRIES = int(os.environ.get("BENCH_STREAM_ENTRIES", "20000"))
BATCH = 1000
DEDUPE_TARGET_B = 64
STREAM_TARGET_RATIO = 1.3

TABLE = parse_routing("pools: {customer: {}}\nroutes:\n  charge.refunded: {customer: [orders.mark_paid]}\n")
UNROUTED = TABLE.match("invoice.paid")  # no stream written: only the dedupe record (and counters)
ROUTED = TABLE.match("charge.refunded")


def _freed(client: redis.Redis, names: list[Any]) -> int:
    """used_memory before minus after deleting `names`, with nothing else in between."""
    pipe = client.pipeline(transaction=True)
    pipe.info("memory")
    for i in range(0, len(names), 10_000):
        pipe.delete(*names[i:i + 10_000])
    pipe.info("memory")
    replies = pipe.execute()
    return int(replies[0]["used_memory"]) - int(replies[-1]["used_memory"])


def _names(client: redis.Redis, pattern: str) -> list[Any]:
    return list(client.scan_iter(match=pattern, count=5000))


# --- payloads ------------------------------------------------------------------------------------


def _line_item(i: int, now: int) -> dict[str, Any]:
    """A checkout line item as the API expands it (each one differs, as real ones do)."""
    amount = 500 + 137 * i
    return {
        "id": f"li_{secrets.token_hex(12)}", "object": "item", "amount_discount": 0,
        "amount_subtotal": amount, "amount_tax": 0, "amount_total": amount, "currency": "usd",
        "description": f"Charcoal suit, size {38 + i}R", "quantity": 1 + i % 3,
        "price": {"id": f"price_{secrets.token_hex(12)}", "object": "price", "active": True,
                  "billing_scheme": "per_unit", "created": now - 86400 * (30 + i), "currency": "usd",
                  "livemode": False, "lookup_key": None, "metadata": {"sku": f"SUIT-CHAR-{38 + i}R"},
                  "product": f"prod_{secrets.token_hex(7)}", "type": "one_time", "unit_amount": amount},
    }


def stripe_body(target_bytes: int) -> bytes:
    """A pretty-printed Stripe event (as Stripe sends it) of about `target_bytes`."""
    now = int(time.time())
    if target_bytes <= 1200:
        event = sample_event("customer.updated", created=now)
    else:
        event = sample_event("checkout.session.completed", created=now)
        items: list[dict[str, Any]] = []
        event["data"]["object"]["line_items"] = {"object": "list", "data": items, "has_more": False}
        while len(orjson.dumps(event, option=orjson.OPT_INDENT_2)) + 900 < target_bytes:
            items.append(_line_item(len(items), now))
        # The rest: a customer's note, as metadata often carries.
        words = [secrets.choice(_WORDS) for _ in range(200)]
        size = len(orjson.dumps(event, option=orjson.OPT_INDENT_2))
        event["data"]["object"]["metadata"]["gift_message"] = " ".join(words)[:max(0, target_bytes - size - 40)]
    return orjson.dumps(event, option=orjson.OPT_INDENT_2)


_WORDS = ("happy", "birthday", "with", "love", "from", "all", "of", "us", "the", "team", "enjoy", "your",
          "new", "suit", "see", "you", "at", "wedding", "next", "month", "thanks", "for", "everything")


# --- dedupe --------------------------------------------------------------------------------------


def dedupe_per_key(client: redis.Redis, prefix: str, count: int) -> float:
    """Earlier versions: one key per event id, holding its object id."""
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.set(f"{{{prefix}}}:seen:evt_{secrets.token_hex(12)}", f"ch_{secrets.token_hex(12)}",
                 ex=defaults.SEEN_RETENTION_S, nx=True)
        if i % BATCH == BATCH - 1:
            pipe.execute()
    pipe.execute()
    return _freed(client, _names(client, f"{{{prefix}}}:seen:*")) / count


async def _publish_unrouted(prefix: str, count: int, buckets: int) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    publisher = Publisher(client, Keys(prefix), defaults.SEEN_RETENTION_S, budget_s=30.0, seen_buckets=buckets)
    try:
        for start in range(0, count, BATCH):
            bodies = [orjson.dumps({"id": f"evt_{secrets.token_hex(12)}", "object": "event", "type": "invoice.paid",
                                    "created": 1, "data": {"object": {"id": f"in_{secrets.token_hex(12)}"}}})
                      for _ in range(min(BATCH, count - start))]
            await asyncio.gather(*(publisher.publish(routing_fields(b), UNROUTED, "v", b) for b in bodies))
    finally:
        await client.aclose()


def dedupe_hashes(client: redis.Redis, prefix: str, count: int, buckets: int) -> tuple[float, str, int]:
    """Bytes per event of the hash records; the hashes' encoding and their number."""
    asyncio.run(_publish_unrouted(prefix, count, buckets))
    names = _names(client, Keys(prefix).seen("*", "*"))
    encodings = sorted({client.object("encoding", name).decode() for name in names[:50]})  # type: ignore[union-attr]
    freed = _freed(client, names)
    client.delete(*_names(client, Keys(prefix).pattern()))  # the counters
    return freed / count, "/".join(encodings), len(names)


# --- stream entries ------------------------------------------------------------------------------


def stream_raw(client: redis.Redis, prefix: str, bodies: list[bytes]) -> float:
    """Earlier versions' entry: every field as now, but the raw body and no encoding field."""
    stream = Keys(prefix).stream("customer")
    pipe = client.pipeline(transaction=False)
    for i, body in enumerate(bodies):
        fields = entry_fields(routing_fields(body), ("orders.mark_paid",), "3f2a9c1b0d", int(time.time() * 1000), body)
        del fields["body_encoding"]
        fields["body"] = body
        pipe.xadd(stream, fields)  # type: ignore[arg-type]
        if i % BATCH == BATCH - 1:
            pipe.execute()
    pipe.execute()
    return _freed(client, [stream]) / len(bodies)


async def _publish_routed(prefix: str, bodies: list[bytes]) -> None:
    client = aioredis.Redis.from_url(REDIS_URL)
    publisher = Publisher(client, Keys(prefix), 3600, budget_s=30.0)
    try:
        for start in range(0, len(bodies), BATCH):
            await asyncio.gather(*(publisher.publish(routing_fields(b), ROUTED, "3f2a9c1b0d", int(time.time() * 1000), b)
                                   for b in bodies[start:start + BATCH]))
    finally:
        await client.aclose()


def stream_published(client: redis.Redis, prefix: str, bodies: list[bytes]) -> float:
    """What the publish script writes now (the dedupe records are deleted separately)."""
    asyncio.run(_publish_routed(prefix, bodies))
    freed = _freed(client, [Keys(prefix).stream("customer")])
    client.delete(*_names(client, Keys(prefix).pattern()))
    return freed / len(bodies)


def _cpu_us(function: Any, bodies: list[bytes]) -> float:
    """CPU per call, the best of 5 passes (the machine is shared)."""
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for body in bodies:
            function(body)
        best = min(best, time.process_time() - started)
    return best / len(bodies) * 1e6


_zstd = zstandard.ZstdCompressor(level=1)
CODECS: dict[str, Any] = {
    "lz4 (used)": lambda b: lz4.frame.compress(b, store_size=True, content_checksum=True),
    "zstd-1": _zstd.compress,
    "zlib-1": lambda b: zlib.compress(b, 1),
}


def weigh_codecs(bodies: list[bytes]) -> str:
    payload = statistics.mean(len(b) for b in bodies)
    return ", ".join(f"{name} {statistics.mean(len(codec(b)) for b in bodies) / payload:4.0%} "
                     f"in {_cpu_us(codec, bodies):4.1f} us" for name, codec in CODECS.items())


def main() -> int:
    client = redis.Redis.from_url(REDIS_URL)
    # As long as "fanout", so key names cost what a deployment's do; unique to this run.
    prefix = f"m{uuid.uuid4().hex[:5]}"
    ok = True
    try:
        client.ping()
        limit = int(client.config_get("hash-max-listpack-entries")["hash-max-listpack-entries"])  # type: ignore[index]
        version = client.info("server")["redis_version"]  # type: ignore[index]
        print(f"Redis {version}, hash-max-listpack-entries {limit} (Redis's default is 128)")

        print(f"\ndedupe state, bytes freed per event at {DEDUPE_EVENTS:,} events (target <= {DEDUPE_TARGET_B} B):")
        per_key = dedupe_per_key(client, prefix + "k", DEDUPE_EVENTS)
        print(f"  a key per event (earlier versions)        {DEDUPE_EVENTS:7,d} events  {per_key:6.1f} B")
        runs = [(DEDUPE_EVENTS, defaults.SEEN_BUCKETS, "the default"),
                (DEDUPE_EVENTS // 10, defaults.SEEN_BUCKETS, "a tenth of the events"),
                (DEDUPE_EVENTS, 256, "fewer sub-buckets"),
                (DEDUPE_EVENTS, max(1, DEDUPE_EVENTS // (limit * 3)), "past the listpack limit")]
        for i, (count, buckets, label) in enumerate(runs):
            per_event, encoding, hashes = dedupe_hashes(client, f"{prefix}{i}", count, buckets)
            print(f"  hashes, SEEN_BUCKETS={buckets:<5d} {count:7,d} events  {per_event:6.1f} B  "
                  f"({hashes} hashes of ~{count / hashes:.0f} records, {encoding}: {label})")
            if i == 0:
                ok &= per_event <= DEDUPE_TARGET_B

        print(f"\na retained stream entry, bytes freed per entry at {STREAM_ENTRIES:,} entries "
              f"(target <= {STREAM_TARGET_RATIO}x the payload):")
        for target in (1024, 2048, 3072, 4096):
            # Sizes spread +-10 % around the target, as real events of one kind vary.
            bodies = [stripe_body(int(target * (0.9 + 0.2 * i / STREAM_ENTRIES))) for i in range(STREAM_ENTRIES)]
            payload = statistics.mean(len(b) for b in bodies)
            raw = stream_raw(client, f"{prefix}r{target}", bodies)
            now = stream_published(client, f"{prefix}p{target}", bodies)
            ok &= now <= STREAM_TARGET_RATIO * payload
            stored = statistics.mean(len(encode_body(b)[1]) for b in bodies[:500])
            print(f"  payload {payload:6.0f} B: raw body {raw:6.0f} B = {raw / payload:4.2f}x   "
                  f"lz4 body ({stored / payload:4.0%} of the payload) {now:6.0f} B = {now / payload:4.2f}x")
            print(f"  {'':16s}body size and CPU: {weigh_codecs(bodies[::20])}")
    finally:
        leftover = _names(client, "{" + prefix + "*")
        if leftover:
            client.delete(*leftover)
        client.close()
    if not ok:
        print("WARNING: a memory target was missed", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
