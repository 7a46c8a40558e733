"""Redis ledger: several router processes (or machines) share one ledger and one set of energy budgets.

Why Redis: budgets must be checked and charged atomically across processes; a Lua script runs atomically on
the server, so "is there room? then hold it" cannot interleave with another process's check.

Layout (all keys under a prefix, default ``router:``):

* ``records``: a sorted set scored by the record's time; members are ``<seq>|<json>`` (``seq`` from
  ``seq``, zero-padded, keeps ties in write order and members unique);
* ``sum:<hour>``: a hash of hourly sums per dimension tuple (what ``totals`` and reports read), updated in
  the same script as the record, so the two never disagree;
* ``buckets``: the hours that have a ``sum:`` hash;
* ``budget:<name>:<window start>``: joules spent plus held, expiring two windows after the window starts;
* ``meta``: schema version and the retention setting.

Durability is Redis's: with its defaults (RDB snapshots) a Redis crash can lose the last minutes; run Redis
with ``appendonly yes`` (and ``appendfsync everysec`` or ``always``) when the ledger must survive that.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis

from .base import (
    BUCKET_S,
    SUMMARY_DIMS,
    Ledger,
    LedgerRecord,
    Reservation,
    SummaryRow,
    aggregate,
    bucket_of,
    totals_from_summary,
    window_start,
)

SCHEMA_VERSION = 1
_METRICS = ("requests", "energy_j", "input_tokens", "output_tokens", "latency_ms_sum", "co2e_g")
_SEP = "\x1f"

_RECORD = """
local n = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[1], ARGV[1], string.format('%015d', n) .. '|' .. ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[3])
local names = {'requests', 'energy_j', 'input_tokens', 'output_tokens', 'latency_ms_sum', 'co2e_g'}
for i = 1, 6 do
  redis.call('HINCRBYFLOAT', KEYS[3], ARGV[4] .. '\\31' .. names[i], ARGV[4 + i])
end
return n
"""

_RESERVE = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used + tonumber(ARGV[1]) > tonumber(ARGV[2]) then
  return nil
end
redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

_SETTLE = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local v = tonumber(redis.call('INCRBYFLOAT', KEYS[1], ARGV[1]))
if v < 0 then
  redis.call('SET', KEYS[1], '0', 'KEEPTTL')
end
return 1
"""


class RedisLedger(Ledger):
    """Ledger and budgets in Redis, shared by every process that points at the same server and prefix."""

    def __init__(self, client: redis.Redis, *, prefix: str = "router:", retention_days: float | None = None) -> None:
        self.r = client
        self.prefix = prefix
        self._k_records = prefix + "records"
        self._k_seq = prefix + "seq"
        self._k_buckets = prefix + "buckets"
        self._k_meta = prefix + "meta"
        self._record_script = self.r.register_script(_RECORD)
        self._reserve_script = self.r.register_script(_RESERVE)
        self._settle_script = self.r.register_script(_SETTLE)
        version = self.r.hget(self._k_meta, "schema_version")
        if version is None:
            self.r.hsetnx(self._k_meta, "schema_version", SCHEMA_VERSION)
        elif int(version) > SCHEMA_VERSION:
            raise RuntimeError(
                f"Redis ledger {prefix!r} has schema version {int(version)}, newer than this router knows"
            )
        if retention_days is not None:
            self.set_retention_days(retention_days)
        self._next_prune = 0.0
        self.apply_retention()

    @classmethod
    def from_url(cls, url: str, *, retention_days: float | None = None, prefix: str | None = None) -> RedisLedger:
        """``redis://HOST:PORT/DB[?prefix=router:&retention_days=N]``; other query options go to redis-py."""
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        prefix = prefix or query.pop("prefix", "router:")
        if retention_days is None and "retention_days" in query:
            retention_days = float(query.pop("retention_days"))
        query.pop("retention_days", None)
        clean = urlunsplit(parts._replace(query=urlencode(query)))
        return cls(redis.Redis.from_url(clean), prefix=prefix, retention_days=retention_days)

    # -- retention --------------------------------------------------------------------------------------
    @property
    def retention_days(self) -> float | None:
        value = self.r.hget(self._k_meta, "retention_days")
        return float(value) if value is not None else None

    def set_retention_days(self, days: float | None) -> None:
        """Keep records for ``days`` (None: forever); shared by every process using this ledger."""
        if days is None:
            self.r.hdel(self._k_meta, "retention_days")
            return
        if days <= 0:
            raise ValueError("retention_days must be positive (or None to keep everything)")
        self.r.hset(self._k_meta, "retention_days", repr(float(days)))

    def apply_retention(self, now: float | None = None) -> int:
        days = self.retention_days
        now = time.time() if now is None else now
        self._next_prune = now + 3600
        return 0 if days is None else self.prune(now - days * 86400)

    def prune(self, older_than: float) -> int:
        """Drop records older than ``older_than`` and their hourly sums; the hour that straddles the cut-off
        is re-summed from what remains, under WATCH so a concurrent write there makes it retry."""
        n = int(self.r.zremrangebyscore(self._k_records, "-inf", f"({older_than!r}"))
        boundary = bucket_of(older_than)
        old = [float(b) for b in self.r.zrangebyscore(self._k_buckets, "-inf", f"({boundary!r}")]
        if old:
            self.r.delete(*(self._sum_key(b) for b in old))
            self.r.zremrangebyscore(self._k_buckets, "-inf", f"({boundary!r}")
        key = self._sum_key(boundary)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    rows = aggregate(self._range(older_than, boundary + BUCKET_S))
                    pipe.multi()
                    pipe.delete(key)
                    for row in rows:
                        dims = json.dumps([getattr(row, d) for d in SUMMARY_DIMS])
                        pipe.hset(key, mapping={dims + _SEP + m: repr(getattr(row, m)) for m in _METRICS})
                    if not rows:
                        pipe.zrem(self._k_buckets, _num(boundary))
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        return n

    # -- records ----------------------------------------------------------------------------------------
    def _sum_key(self, bucket: float) -> str:
        return f"{self.prefix}sum:{_num(bucket)}"

    def _record_call(self, rec: LedgerRecord) -> tuple[list[str], list[Any]]:
        data = rec.as_dict()
        bucket = bucket_of(rec.ts)
        dims = json.dumps([data[d] for d in SUMMARY_DIMS])
        keys = [self._k_records, self._k_seq, self._sum_key(bucket), self._k_buckets]
        args: list[Any] = [
            repr(float(rec.ts)),
            json.dumps(data, separators=(",", ":")),
            _num(bucket),
            dims,
            1,
            repr(float(rec.energy_j)),
            int(rec.input_tokens or 0),
            int(rec.output_tokens or 0),
            repr(float(rec.latency_ms or 0.0)),
            repr(float(rec.co2e_g or 0.0)),
        ]
        return keys, args

    def record(self, rec: LedgerRecord) -> None:
        keys, args = self._record_call(rec)
        self._record_script(keys=keys, args=args)
        if rec.ts >= self._next_prune and time.time() >= self._next_prune:
            self.apply_retention()

    atomic_batches = True

    def record_many(self, recs: list[LedgerRecord]) -> None:
        """One round trip for the batch: the same per-record script for each, inside MULTI/EXEC, so a batch
        that fails to reach the server applies nothing."""
        if not recs:
            return
        pipe = self.r.pipeline(transaction=True)
        for rec in recs:
            keys, args = self._record_call(rec)
            self._record_script(keys=keys, args=args, client=pipe)
        pipe.execute()
        if max(r.ts for r in recs) >= self._next_prune and time.time() >= self._next_prune:
            self.apply_retention()

    def _range(
        self, since: float, until: float | None, offset: int | None = None, count: int | None = None
    ) -> list[LedgerRecord]:
        hi = "+inf" if until is None else f"({until!r}"
        members = self.r.zrangebyscore(self._k_records, repr(float(since)), hi, start=offset, num=count)
        return [LedgerRecord(**json.loads(m.split(b"|", 1)[1])) for m in members]

    def records(self, since: float = 0.0, until: float | None = None, limit: int | None = None) -> list[LedgerRecord]:
        return self._range(since, until, 0 if limit is not None else None, limit)

    def iter_records(
        self, since: float = 0.0, until: float | None = None, batch: int = 10_000
    ) -> Iterator[LedgerRecord]:
        offset = 0
        while True:
            page = self._range(since, until, offset, batch)
            yield from page
            if len(page) < batch:
                return
            offset += batch

    def _stored_summary(self, lo: float, hi: float) -> list[SummaryRow]:
        hi_s = "+inf" if math.isinf(hi) else f"({hi!r}"
        buckets = [float(b) for b in self.r.zrangebyscore(self._k_buckets, repr(float(lo)), hi_s)]
        pipe = self.r.pipeline(transaction=False)
        for b in buckets:
            pipe.hgetall(self._sum_key(b))
        out: list[SummaryRow] = []
        for b, fields in zip(buckets, pipe.execute(), strict=True):
            rows: dict[bytes, SummaryRow] = {}
            for field, value in fields.items():
                dims, metric = field.rsplit(_SEP.encode(), 1)
                row = rows.get(dims)
                if row is None:
                    row = rows[dims] = SummaryRow(b, *json.loads(dims))
                v = float(value)
                name = metric.decode()
                setattr(row, name, int(round(v)) if name in ("requests", "input_tokens", "output_tokens") else v)
            out.extend(rows.values())
        return out

    def spent(self, *, since: float, model: str | None = None, key_hash: str | None = None) -> float:
        return sum(
            row.energy_j
            for row in self.summary(since)
            if (model is None or row.model == model) and (key_hash is None or row.key_hash == key_hash)
        )

    def totals(self, by: str = "model", since: float = 0.0) -> list[dict[str, Any]]:
        return totals_from_summary(self.summary(since), by)

    # -- budgets ----------------------------------------------------------------------------------------
    def _budget_key(self, budget: str, start: float) -> str:
        return f"{self.prefix}budget:{budget}:{_num(start)}"

    def try_reserve(self, budget: str, joules: float, limit_j: float, window_s: float) -> Reservation | None:
        start = window_start(time.time(), window_s)
        ok = self._reserve_script(
            keys=[self._budget_key(budget, start)],
            args=[repr(float(joules)), repr(float(limit_j)), max(1, int(math.ceil(2 * window_s)))],
        )
        return Reservation(uuid.uuid4().hex, budget, joules, start) if ok else None

    def _settle_call(self, reservation: Reservation, actual_j: float) -> dict[str, list[str]]:
        return {"keys": [self._budget_key(reservation.budget, reservation.window_start)],
                "args": [repr(float(actual_j - reservation.joules))]}

    def settle(self, reservation: Reservation, actual_j: float) -> None:
        self._settle_script(**self._settle_call(reservation, actual_j))

    def settle_many(self, settlements: list[tuple[Reservation, float]]) -> None:
        """One round trip: each settlement's script (atomic by itself) in one pipeline, in order."""
        if not settlements:
            return
        pipe = self.r.pipeline(transaction=False)
        for reservation, actual_j in settlements:
            self._settle_script(**self._settle_call(reservation, actual_j), client=pipe)
        pipe.execute()

    def budget_used(self, budget: str, window_s: float) -> float:
        value = self.r.get(self._budget_key(budget, window_start(time.time(), window_s)))
        return float(value) if value is not None else 0.0

    def clear(self) -> None:
        """Delete every key under this ledger's prefix (tests, and starting over)."""
        keys = list(self.r.scan_iter(match=self.prefix + "*", count=1000))
        for i in range(0, len(keys), 500):
            self.r.delete(*keys[i : i + 500])

    def close(self) -> None:
        self.r.close()


def _num(x: float) -> str:
    """A stable text form for bucket and window starts (``1700000000`` rather than ``1700000000.0``)."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))
