"""Redis ledger: several router processes (or machines) share one ledger and one set of energy budgets.

Why Redis: budgets must be checked and charged atomically across processes; a Lua script runs atomically on
the server, so "is there room? then hold it" cannot interleave with another process's check.

Layout (all keys under a prefix, default ``router:``):

* ``records``: a sorted set scored by the record's time; members are ``<seq>|<json>`` (``seq`` from
  ``seq``, zero-padded, keeps ties in write order and members unique);
* ``ids``: a sorted set of record ids scored by the record's time: the record script adds the id first and
  writes nothing when it was there already, so writing a record twice stores it once (pruned with ``records``);
* ``sum:<hour>``: a hash of hourly sums per dimension tuple (what ``totals`` and reports read), updated in
  the same script as the record, so the two never disagree;
* ``buckets``: the hours that have a ``sum:`` hash;
* ``budget:<name>:<window start>``: joules spent plus held, expiring two windows after the window starts;
* ``hold:<reservation id>``: the joules a reservation holds until it is settled, or ``released`` where its client
  gave up on it (*Timeouts*), expiring with its budget's counter;
* ``held:<name>:<window start>`` (a hash: reservation id -> the joules it still holds) and
  ``expiry:<name>:<window start>`` (a sorted set: reservation id -> when its hold stops counting, Redis's clock):
  the holds of that counter. A hold past its time (``hold_s``: the call's deadline and a margin) belongs to a call
  that cannot still be running (its process was killed): it is given back when the budget would otherwise refuse a
  reservation, and ``budget_used`` leaves it out without writing (so it runs on a replica, or as a user without
  write commands); a settlement arriving after that counts what the call used in full. Only a hold whose
  ``hold:<id>`` key still holds a figure counts: one a process of the previous release settled or released (by that
  key alone) was given back then;
* ``reqs``: each request id scored by the time of its newest record (kept by the record script);
* ``meta``: schema version and the retention setting;
* feedback and stored prompts: :mod:`router.ledger.redis_feedback`.

Schema versions (the ``meta`` hash's ``schema_version``; :mod:`router.ledger.migrations`): 1, the layout above
without ``ids``; 2, ``ids``, filled for the records already there with ``legacy-<seq>`` (the id a record
written before ids existed reads back with); 3, ``reqs``, filled from the records already there. The missing
steps run in one Lua script with the version update, so no other client sees a half-migrated store; each step is
idempotent, so a script cut short by a crash is simply run again at the next open.

Timeouts: a call waits for the server at most ``socket_timeout`` (10 s unless the URL says), except the two made
while answering a request, ``try_reserve`` and ``budget_used``: they have a client of their own that waits at most
``request_timeout_s`` (1 s unless the URL says, never more than ``socket_timeout``). The proxy makes them on its
event loop, where a Redis that hangs (stopped, a host that froze: its connections stay open and nothing answers)
would hold every request, ``/health`` and every stream in flight for as long as one of them waits: the first one
fails after ``request_timeout_s``, the journaled ledger starts the outage, and the ones after it fail at once.
A reservation given up on may still reach the server and run once it answers again (a Redis paused, or busy with
another client's slow command): a background thread releases it by id (the ``RELEASE`` script, retried until the
server answers), and the tombstone that leaves makes a reservation arriving after it a no-op, so the hold is given
back in whichever order the two run, instead of counting as spent until the window ends.

Durability is Redis's: with its defaults (RDB snapshots) a Redis crash can lose the last minutes; run Redis
with ``appendonly yes`` (and ``appendfsync everysec`` or ``always``) when the ledger must survive that.

Length: one store's implementation of the whole :class:`~router.ledger.base.Ledger` interface (its schema and
feedback live in modules of their own); the methods share the key layout above.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import SplitResult, parse_qsl, quote, unquote, urlencode, urlsplit

import redis

from ..errors import LedgerError
from .arguments import (
    MAX_COUNT,
    checked_count,
    checked_limit,
    checked_retention_days,
    checked_span,
    checked_time,
    stored_retention_days,
)
from .base import (
    BUCKET_S,
    SUMMARY_DIMS,
    HoldCounts,
    Ledger,
    LedgerRecord,
    Reservation,
    Retention,
    SummaryRow,
    aggregate,
    bucket_of,
    refuse_unusable_figures,
    window_start,
)
from .errors import guarded, ledger_error, redis_error
from .given_up import GivenUp
from .redis_feedback import RedisFeedback, score_window
from .redis_feedback import parse_member as _parse
from .redis_schema import (
    METRICS,
    MIGRATIONS,
    RECORD,
    RELEASE,
    RESERVE,
    SCHEMA_VERSION,
    SEP,
    SETTLE,
    USED,
    migration_script,
)

REQUEST_TIMEOUT_S = 1.0
"""The longest ``try_reserve`` and ``budget_used`` wait for the server (the module's *Timeouts*)."""


class RedisLedger(RedisFeedback, Retention, Ledger):
    """Ledger and budgets in Redis, shared by every process that points at the same server and prefix."""

    driver_errors = (redis.RedisError, OSError)

    @guarded("open the ledger")
    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "router:",
        retention_days: float | None = None,
        url: str | None = None,
        request_client: redis.Redis | None = None,
    ) -> None:
        """``request_client``: the client for ``try_reserve`` and ``budget_used`` (``client`` when None), one whose
        ``socket_timeout`` is short (:meth:`from_url` makes it with ``request_timeout_s``)."""
        checked_retention_days(retention_days)
        if not prefix:
            raise ledger_error(url or _describe(client, prefix),
                               "the key prefix is empty: the ledger's keys (records, meta, ...) would sit at the "
                               "database's top level, and clearing the ledger would match every key in it",
                               "give the ledger's keys a prefix of their own, e.g. ?prefix=router: (the default "
                               "when prefix is left out)", retryable=False)  # fmt: skip
        self.r = client
        self._request_r = request_client or client
        self.prefix = prefix
        self.url = url or _describe(client, prefix)
        self._k_records = prefix + "records"
        self._k_ids = prefix + "ids"
        self._k_reqs = prefix + "reqs"
        self._k_seq = prefix + "seq"
        self._k_buckets = prefix + "buckets"
        self._k_meta = prefix + "meta"
        self._hold_head = prefix + "hold:"  # + a reservation id: its hold (the module's layout)
        self._record_script = self.r.register_script(RECORD)
        self._reserve_script = self.r.register_script(RESERVE)
        self._settle_script = self.r.register_script(SETTLE)
        self._release_script = self.r.register_script(RELEASE)
        self._used_script = self.r.register_script(USED)
        # (budget, window start, reservation id, seconds to keep the tombstone) of each reservation a timeout gave
        # up on
        self._given_up: GivenUp[tuple[str, float, str, int]] = GivenUp(self, self._release, "redis-ledger-release")
        self._migrate()
        if retention_days is not None and retention_days != self.retention_days:  # no write where it is set
            self.set_retention_days(retention_days)
        try:
            self.apply_retention()
        except LedgerError as exc:
            # a replica, or a user without write commands, opens the ledger to read it (`router ledger budgets`,
            # reports): the processes that write it prune it
            if not isinstance(exc.__cause__, redis.ReadOnlyError | redis.exceptions.NoPermissionError):
                raise

    @classmethod
    def from_url(cls, url: str, *, retention_days: float | None = None, prefix: str | None = None) -> RedisLedger:
        """``redis://[:PASSWORD@]HOST:PORT/DB[?prefix=router:&retention_days=N&request_timeout_s=S]`` (or
        ``rediss://``, or ``unix:///PATH?db=N``); other query options go to redis-py (``socket_timeout`` defaults
        to 10 s and ``socket_connect_timeout`` to 5 s here, so a Redis that stops answering fails a call instead of
        hanging it), and one it does not take is refused. ``request_timeout_s`` (default 1 s, never more than
        either): the wait of the calls made while answering a request (the module's *Timeouts*)."""
        parts = urlsplit(url)
        # blank values kept to tell ?prefix= from no prefix; other blank options are dropped, as redis-py does
        query = {k: v for k, v in parse_qsl(parts.query, keep_blank_values=True) if v or k == "prefix"}
        _check_database(url, parts.scheme, parts.path, query.get("db"))
        given_prefix = query.pop("prefix", "router:")
        prefix = given_prefix if prefix is None else prefix
        try:
            if retention_days is None and "retention_days" in query:
                retention_days = float(query.pop("retention_days"))
            query.pop("retention_days", None)
            request_timeout_s = float(query.pop("request_timeout_s", REQUEST_TIMEOUT_S))
            if not 0 < request_timeout_s < math.inf:
                raise ValueError(f"request_timeout_s={request_timeout_s:g}: a number of seconds above 0")
            query.setdefault("socket_timeout", "10")
            query.setdefault("socket_connect_timeout", "5")
            client = redis.Redis.from_url(_redis_py_url(parts, query))
            request_query = {**query, **{name: repr(min(float(query[name]), request_timeout_s))
                                         for name in ("socket_timeout", "socket_connect_timeout")}}
            request_client = redis.Redis.from_url(_redis_py_url(parts, request_query))
        except ValueError as exc:
            raise ledger_error(url, f"not a usable Redis URL ({exc})",
                               "write it as redis://[:PASSWORD@]HOST:PORT/DB[?prefix=router:]",
                               retryable=False) from exc  # fmt: skip
        unknown = sorted(set(query) - _url_options(client))
        if unknown:
            client.close()
            request_client.close()
            named = ", ".join(map(repr, unknown))
            raise ledger_error(url, f"the URL's option {named} is not a Redis connection option",
                               "remove it or spell it as redis-py does (socket_timeout, socket_connect_timeout, "
                               "health_check_interval, max_connections, ...); the router's own are prefix, "
                               "retention_days and request_timeout_s", retryable=False)  # fmt: skip
        try:
            return cls(client, prefix=prefix, retention_days=retention_days, url=url, request_client=request_client)
        except BaseException:
            client.close()
            request_client.close()
            raise

    def _translate(self, exc: BaseException, action: str) -> Exception:
        return redis_error(self.url, exc, action)

    def _migrate(self) -> None:
        # read first: a store already at this version needs no write, so a replica or a user without write
        # commands can open it (`router ledger budgets`, reports); the script checks the version again itself
        version = int(self.r.hget(self._k_meta, "schema_version") or 0)
        if version < SCHEMA_VERSION:
            version = int(self.r.eval(migration_script(), 4, self._k_meta, self._k_records, self._k_ids,
                                      self._k_reqs))
        MIGRATIONS.plan(version, self.url)  # raises when the store is newer than this code

    @property
    @guarded("read the schema version")
    def schema_version(self) -> int:
        return int(self.r.hget(self._k_meta, "schema_version") or 0)

    @property
    def latest_schema_version(self) -> int:
        return SCHEMA_VERSION

    @guarded("rebuild the hourly summary")
    def rebuild_summary(self) -> None:
        """Recompute every ``sum:`` hash from the records (not atomic against concurrent writers: run it when
        ``router ledger doctor`` reports a mismatch, ideally with the writers stopped)."""
        old = [float(b) for b in self.r.zrange(self._k_buckets, 0, -1)]
        rows = aggregate(self.iter_records())
        pipe = self.r.pipeline(transaction=True)
        for b in old:
            pipe.delete(self._sum_key(b))
        pipe.delete(self._k_buckets)
        for row in rows:
            dims = json.dumps([getattr(row, d) for d in SUMMARY_DIMS])
            pipe.hset(self._sum_key(row.bucket), mapping={dims + SEP + m: repr(getattr(row, m)) for m in METRICS})
            pipe.zadd(self._k_buckets, {_num(row.bucket): row.bucket})
        pipe.execute()

    # -- retention --------------------------------------------------------------------------------------
    @property
    @guarded("read a setting")
    def retention_days(self) -> float | None:
        return stored_retention_days(self.r.hget(self._k_meta, "retention_days"), self.url)

    @guarded("store a setting")
    def set_retention_days(self, days: float | None) -> None:
        """Keep records for ``days`` (None: forever); shared by every process using this ledger."""
        days = checked_retention_days(days)
        if days is None:
            self.r.hdel(self._k_meta, "retention_days")
            return
        self.r.hset(self._k_meta, "retention_days", repr(days))


    @guarded("read recent calls")
    def recent_calls(self, model: str, limit: int) -> list[LedgerRecord]:
        """Pages back through the time-ordered records (all models share one sorted set), up to 50 pages."""
        limit = checked_count("limit", limit)
        found: list[LedgerRecord] = []
        page = min(max(256, 4 * limit), MAX_COUNT)
        for n in range(50):
            members = self.r.zrevrange(self._k_records, n * page, (n + 1) * page - 1)
            found += [r for r in map(_parse, members) if r.model == model and r.outcome in ("ok", "escalated")]
            if len(found) >= limit or len(members) < page:
                break
        return found[:limit]

    @guarded("read the latest records")
    def latest_records(self, limit: int) -> list[LedgerRecord]:
        if checked_count("limit", limit) == 0:
            return []  # ZREVRANGE 0 -1 would be every record
        return [_parse(m) for m in self.r.zrevrange(self._k_records, 0, limit - 1)]  # the sorted set, by time

    @guarded("prune old records")
    def prune(self, older_than: float) -> int:
        """Drop records older than ``older_than`` and their hourly sums; the hour that straddles the cut-off
        is re-summed from what remains, under WATCH so a concurrent write there makes it retry."""
        older_than = checked_time("older_than", older_than)
        n = int(self.r.zremrangebyscore(self._k_records, "-inf", f"({older_than!r}"))
        self.r.zremrangebyscore(self._k_ids, "-inf", f"({older_than!r}")
        self._prune_feedback(older_than)
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
                        pipe.hset(key, mapping={dims + SEP + m: repr(getattr(row, m)) for m in METRICS})
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
        keys = [self._k_records, self._k_seq, self._sum_key(bucket), self._k_buckets, self._k_ids, self._k_reqs]
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
            rec.record_id,
            rec.request_id,
        ]
        return keys, args

    @guarded("write a record")
    def record(self, rec: LedgerRecord) -> None:
        refuse_unusable_figures(self.url, (rec,))
        keys, args = self._record_call(rec)
        self._record_script(keys=keys, args=args)
        self.prune_if_due(rec.ts)

    atomic_batches = True

    @guarded("write records")
    def record_many(self, recs: list[LedgerRecord]) -> None:
        """One round trip for the batch: the same per-record script for each, inside MULTI/EXEC, so a batch
        that fails to reach the server applies nothing."""
        if not recs:
            return
        refuse_unusable_figures(self.url, recs)
        pipe = self.r.pipeline(transaction=True)
        for rec in recs:
            keys, args = self._record_call(rec)
            self._record_script(keys=keys, args=args, client=pipe)
        pipe.execute()
        self.prune_if_due(max(r.ts for r in recs))

    def _range(
        self, since: float, until: float | None, offset: int | None = None, count: int | None = None
    ) -> list[LedgerRecord]:
        members = self.r.zrangebyscore(self._k_records, *score_window(since, until), start=offset, num=count)
        return [_parse(m) for m in members]

    @guarded("read records")
    def records(self, since: float = 0.0, until: float | None = None, limit: int | None = None) -> list[LedgerRecord]:
        since, until = checked_span(since, until)
        limit = checked_limit(limit)
        return self._range(since, until, 0 if limit is not None else None, limit)

    @guarded("read records")
    def iter_records(
        self, since: float = 0.0, until: float | None = None, batch: int = 10_000
    ) -> Iterator[LedgerRecord]:
        since, until = checked_span(since, until)
        batch = checked_count("batch", batch, least=1)
        offset = 0
        while True:
            page = self._range(since, until, offset, batch)
            yield from page
            if len(page) < batch:
                return
            offset += batch

    @guarded("read the hourly summary")
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
                dims, metric = field.rsplit(SEP.encode(), 1)
                row = rows.get(dims)
                if row is None:
                    row = rows[dims] = SummaryRow(b, *json.loads(dims))
                v = float(value)
                name = metric.decode()
                setattr(row, name, int(round(v)) if name in ("requests", "input_tokens", "output_tokens") else v)
            out.extend(rows.values())
        return out

    @guarded("read the energy spent")
    def spent(self, *, since: float, model: str | None = None, key_hash: str | None = None) -> float:
        return sum(
            row.energy_j
            for row in self.summary(since)
            if (model is None or row.model == model) and (key_hash is None or row.key_hash == key_hash)
        )

    # -- budgets ----------------------------------------------------------------------------------------
    def _budget_key(self, budget: str, start: float) -> str:
        return f"{self.prefix}budget:{budget}:{_num(start)}"

    def _holds_keys(self, budget: str, start: float) -> list[str]:
        """The counter, its ``held`` hash and its ``expiry`` set (the module's layout)."""
        return [self._budget_key(budget, start), f"{self.prefix}held:{budget}:{_num(start)}",
                f"{self.prefix}expiry:{budget}:{_num(start)}"]

    def _keys(self, budget: str, start: float, reservation_id: str) -> list[str]:
        """KEYS of the reserve, settle and release scripts: the counter, the hold, ``held``, ``expiry``."""
        counter, held, expiry = self._holds_keys(budget, start)
        return [counter, self._hold_head + reservation_id, held, expiry]

    @guarded("reserve budget")
    def _try_reserve(self, budget: str, joules: float, limit_j: float, window_s: float,
                     hold_s: float | None) -> Reservation | None:
        start = window_start(time.time(), window_s)
        reservation_id = uuid.uuid4().hex
        keep_s = max(1, int(math.ceil(2 * window_s)))
        hold_arg = "" if hold_s is None else repr(hold_s)
        try:
            verdict = self._reserve_script(
                keys=self._keys(budget, start, reservation_id),
                args=[repr(float(joules)), repr(float(limit_j)), keep_s, reservation_id, hold_arg, self._hold_head],
                client=self._request_r)
        except self.driver_errors:
            # the script may have reached the server and run (or run later): whatever it held must not stay held
            self._given_up.add((budget, start, reservation_id, keep_s))
            raise
        return Reservation(reservation_id, budget, joules, start) if verdict == 1 else None

    def _release(self, item: tuple[str, float, str, int]) -> None:
        budget, start, reservation_id, keep_s = item
        self._release_script(keys=self._keys(budget, start, reservation_id), args=[keep_s, reservation_id])

    @guarded("release the reservations given up on")
    def release_given_up(self) -> None:
        """Release now, on the calling thread, each reservation a timeout gave up on that the background thread
        has not released yet (what it does next; the two take turns). Raises ``LedgerError`` where the server does
        not answer; what is left stays queued for the thread."""
        self._given_up.release_all()

    def _settle_call(self, reservation: Reservation, actual_j: float) -> dict[str, list[str]]:
        return {"keys": self._keys(reservation.budget, reservation.window_start, reservation.id),
                "args": [repr(float(actual_j)), reservation.id]}

    @guarded("settle a reservation")
    def _settle(self, reservation: Reservation, actual_j: float) -> None:
        self._settle_script(**self._settle_call(reservation, actual_j))

    @guarded("settle reservations")
    def _settle_many(self, settlements: list[tuple[Reservation, float]]) -> None:
        """One round trip: each settlement's script (atomic by itself) in one pipeline, in order."""
        pipe = self.r.pipeline(transaction=False)
        for reservation, actual_j in settlements:
            self._settle_script(**self._settle_call(reservation, actual_j), client=pipe)
        pipe.execute()

    @guarded("read a budget")
    def budget_used(self, budget: str, window_s: float) -> float:
        """The counter's figure less the holds past their time that still count in it (they are given back by the
        next reservation that finds no room). Reads only: a replica, or a user without write commands, can run it."""
        keys = self._holds_keys(budget, window_start(time.time(), window_s))
        counter, *expired = self._used_script(keys=keys, args=[self._hold_head], client=self._request_r)
        # as the reservation's give-back leaves it: never below 0
        return max(0.0, float(counter) - sum(map(float, expired)))

    @guarded("count the budget holds")
    def hold_counts(self) -> HoldCounts:
        counts = HoldCounts()
        seconds, micros = self.r.time()
        now = seconds + micros / 1e6
        head = f"{self.prefix}held:"
        for raw in self.r.scan_iter(match=_glob_escaped(head) + "*", count=1000):
            held_key = raw.decode() if isinstance(raw, bytes) else raw
            expiry = dict(self.r.zrange(f"{self.prefix}expiry:{held_key[len(head):]}", 0, -1, withscores=True))
            # 0: expired and given back, its settlement not come yet
            holding = [(rid, float(j)) for rid, j in self.r.hgetall(held_key).items() if float(j) != 0]
            if not holding:
                continue
            # a hold settled or released by a process of the previous release has no hold key (or a tombstone)
            states = self.r.mget([self._hold_head.encode() + rid for rid, _ in holding])
            for (rid, joules), state in zip(holding, states, strict=True):
                if state is not None and state != b"released":
                    counts.add(joules, expiry.get(rid), now)
        return counts

    @guarded("list the budget counters")
    def budget_keys(self, since: float) -> list[str]:
        """A scan of the ``budget:`` keys (each expires two windows after its window starts, so they are few)."""
        since = checked_time("since", since)
        head = f"{self.prefix}budget:"
        found: set[str] = set()
        for raw in self.r.scan_iter(match=_glob_escaped(head) + "*", count=1000):
            name, _, start = (raw.decode() if isinstance(raw, bytes) else raw)[len(head):].rpartition(":")
            if name and float(start) >= since:
                found.add(name)
        return list(found)

    @guarded("clear the ledger")
    def clear(self) -> None:
        """Delete every key under this ledger's prefix (tests, and starting over)."""
        keys = list(self.r.scan_iter(match=_glob_escaped(self.prefix) + "*", count=1000))
        for i in range(0, len(keys), 500):
            self.r.delete(*keys[i : i + 500])

    @guarded("close the ledger")
    def _close(self) -> None:
        self.r.close()
        if self._request_r is not self.r:
            self._request_r.close()


def _redis_py_url(parts: SplitResult, query: dict[str, str]) -> str:
    """The URL redis-py is given: the router's options taken out (not urlunsplit: it writes unix:///PATH as
    unix:/PATH, which redis-py refuses)."""
    return f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(query, quote_via=quote)}"


def _check_database(url: str, scheme: str, path: str, db_option: str | None) -> None:
    """Refuse a database that is not a plain number from 0: redis-py reads ``/abc`` as database 0 (and
    ``/1/2`` as 12) without a word, so the ledger would read and write another database than the one named."""
    given = db_option if db_option is not None else "" if scheme == "unix" else unquote(path).removeprefix("/")
    if given == "" or re.fullmatch(r"[0-9]+", given):
        return
    raise ledger_error(url, f"the database {given!r} is not a database number (0, 1, 2, ...)",
                       "the URL's path is the database number: write redis://HOST:PORT/0 (or ?db=0 after a "
                       "unix:// socket path), below the server's `databases` setting (16 by default)",
                       retryable=False)  # fmt: skip


def _describe(client: redis.Redis, prefix: str) -> str:
    """``redis://host:port/db?prefix=...`` of a client made without a URL (never its password)."""
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return f"unix://{kw['path']}?db={kw.get('db', 0)}&prefix={prefix}"
    return f"redis://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}?prefix={prefix}"


def _url_options(client: redis.Redis) -> frozenset[str]:
    """The query options a client made from a URL can take: its pool's and its connection class's keyword
    parameters. redis-py passes any other option on to the connection, whose first use then fails with a
    ``TypeError`` that names neither the URL nor the fix."""
    pool = client.connection_pool
    names: set[str] = set()
    for cls in (*pool.connection_class.__mro__, *type(pool).__mro__):
        init = vars(cls).get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):  # a builtin's __init__ without a signature
            continue
        names.update(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    names.discard("self")
    return frozenset(names)


def _glob_escaped(text: str) -> str:
    """``text`` matched literally in a ``SCAN MATCH`` pattern (a prefix may hold ``*``, ``?`` or brackets)."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _num(x: float) -> str:
    """A stable text form for bucket and window starts (``1700000000`` rather than ``1700000000.0``)."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))
