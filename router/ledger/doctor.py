"""``router ledger doctor``: is the store sound, and is anything waiting in a journal? Replays what is.

Checks, in order: the store opens (else the ``LedgerError`` that says why, and nothing more can be checked);
its schema version against the code's; the store's own integrity check (SQLite ``PRAGMA integrity_check``); the
budget holds it keeps (``Ledger.hold_counts``: live, expired, without an expiry), for information; the hourly
summary, and where the store keeps one the coarser ``rollup_hourly`` the dashboard's totals read, against the
records they sum (``--repair`` rebuilds both from the records); journals in the store's
journal folder: one whose STORE note names another store is a problem and is not replayed; those of dead processes
are replayed (unless ``replay=False``), those of live processes are theirs to replay, and records a store refused
(``rejected.jsonl``) are reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import JournalSettings
from ..errors import LedgerError
from .arguments import EARLIEST_TS
from .base import SUMMARY_DIMS, Ledger, LedgerRecord, SummaryRow, aggregate
from .errors import redact
from .journal import journal_folder as store_journal_folder
from .journal import other_spelling_folders
from .journal_note import store_note_conflict
from .replay import claim, replay_folder, segment_files, unreadable_error
from .rollup import ROLLUP_DIMS, RollupFolding


@dataclass
class Finding:
    ok: bool
    text: str


@dataclass
class DoctorReport:
    url: str
    findings: list[Finding] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if not f.ok]

    def add(self, ok: bool, text: str) -> None:
        self.findings.append(Finding(ok, text))


StepProgress = Callable[[str, float, float | None], None]
"""Told how far the doctor is in a step that can take minutes on a big ledger: what it is doing (a phrase that
says the units), how many units are done and of how many (None: not known, as for one long query)."""


def _key(row: SummaryRow) -> tuple[Any, ...]:
    return (row.bucket, *((getattr(row, d) or None) for d in SUMMARY_DIMS))


CHECKED_SPAN_S = 86_400
"""The summary is checked a day of hours at a time, so the doctor holds a day's summary rows and records, not the
whole ledger's: with a row per key, policy and task the summary holds about a row per record (1.37 million rows for
1.5 million records over 90 days), and both sides of all of it at once take gigabytes."""


def summary_mismatches(
    ledger: Ledger, limit: int = 5, progress: StepProgress | None = None
) -> tuple[int, list[str]]:
    """How many hourly summary rows disagree with the records they sum, and a few of them described. The records
    are read once, in time order; each day that holds any is compared with the stored rows of that day, and the
    stored rows of the spans between (before the first record, after the last) all lack records. ``progress`` is
    told the days done of the span from the first record's day to the last's, once a day."""
    count = 0
    examples: list[str] = []
    for problem in _mismatches(ledger, progress):
        count += 1
        if len(examples) < limit:
            examples.append(problem)
    return count, examples


def _mismatches(ledger: Ledger, progress: StepProgress | None = None) -> Iterator[str]:
    checked_to = -math.inf  # the stored summary is compared up to here
    day: list[LedgerRecord] = []  # the records of the day being read
    read = 0
    tell = _day_progress(ledger, progress)
    for rec in ledger.iter_records(EARLIEST_TS):
        if day and rec.ts >= _day_end(day[0]):
            yield from _compare_day(ledger, day, checked_to)
            checked_to = _day_end(day[0])
            tell(checked_to, read)
            day = []
        day.append(rec)
        read += 1
    if day:
        yield from _compare_day(ledger, day, checked_to)
        checked_to = _day_end(day[0])
        tell(checked_to, read)
    yield from _compare(ledger.stored_summary(checked_to, math.inf), [])


def _day_progress(ledger: Ledger, progress: StepProgress | None) -> Callable[[float, int], None]:
    """What tells ``progress`` how far the check is once a day (checked up to a day's end, records read so far):
    days done of the days from the first record to the last, two indexed reads rather than a count of them all."""
    if progress is None:
        return lambda _checked_to, _read: None
    first = next(ledger.iter_records(EARLIEST_TS, batch=1), None)
    last = ledger.latest_records(1)
    if first is None or not last:
        return lambda _checked_to, _read: None
    start = _day_end(first) - CHECKED_SPAN_S
    days = max(1, round((_day_end(last[0]) - start) / CHECKED_SPAN_S))

    def tell(checked_to: float, read: int) -> None:
        done = min(days, round((checked_to - start) / CHECKED_SPAN_S))
        progress(f"checking the hourly summary: day {done:,} of {days:,}, {read:,} records", done, days)

    return tell


def _day_end(rec: LedgerRecord) -> float:
    return rec.ts - rec.ts % CHECKED_SPAN_S + CHECKED_SPAN_S


def _compare_day(ledger: Ledger, records: list[LedgerRecord], checked_to: float) -> Iterator[str]:
    """The day of ``records`` against its stored rows, and the stored rows since ``checked_to`` (no records)."""
    yield from _compare(ledger.stored_summary(checked_to, _day_end(records[0])), aggregate(records))


def _compare(stored_rows: list[SummaryRow], expected_rows: list[SummaryRow]) -> Iterator[str]:
    stored = {_key(row): row for row in stored_rows}
    expected = {_key(row): row for row in expected_rows}
    for key in sorted(set(stored) | set(expected), key=repr):
        a, b = stored.get(key), expected.get(key)
        if a is None or b is None:
            what = "no summary row" if a is None else "a summary row without records"
            yield f"hour {key[0]:.0f} {key[1]}: {what}"
            continue
        for metric in ("requests", "energy_j", "input_tokens", "output_tokens", "latency_ms_sum", "co2e_g"):
            x, y = float(getattr(a, metric)), float(getattr(b, metric))
            if not math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-6):
                yield f"hour {key[0]:.0f} {key[1]}: {metric} {x:g} in the summary, {y:g} in the records"
                break


def rollup_mismatches(led: Ledger) -> tuple[int, list[str]]:
    """How many hours of ``rollup_hourly`` (by model, tier, outcome and energy source) disagree with the records,
    and a few described; (0, []) for a store without it. It is folded, not kept by a trigger, so nothing but a
    prune or rebuild takes a deleted record out of it: a process of the release before it that prunes records
    (its retention) leaves their sums in, and the dashboard counts them until this router's next prune."""
    if not isinstance(led, RollupFolding):
        return 0, []
    # a few dozen rows an hour on each side: the records are summed by the store, not held
    stored = led.summary(0.0, dims=ROLLUP_DIMS)
    expected = led.raw_summary(0.0, None, dims=ROLLUP_DIMS)
    found = list(_compare(stored, expected))
    return len(found), found[:3]


def _count_lines(path: Path, *, records_only: bool = False) -> int:
    """The lines of a journal file; ``records_only``: not the budget settlements journaled beside the records."""
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip() and not (records_only and line.startswith(b'{"settlement"')))
    except OSError:
        return 0


def diagnose(
    url: str,
    *,
    journal_folder: Path | None = None,
    replay: bool = True,
    repair: bool = False,
    ledger: Ledger | None = None,
    progress: StepProgress | None = None,
) -> DoctorReport:
    """Check the store ``url`` names (or ``ledger``, already open) and its journal folder; ``progress`` is told
    how far the long steps are (the integrity check, the summary check a day at a time, the journal replay)."""
    from . import open_store

    report = DoctorReport(redact(url))
    folder = journal_folder or store_journal_folder(JournalSettings(), url)
    led = ledger
    if led is None:
        try:
            led = open_store(url)
        except LedgerError as exc:
            report.add(False, f"the store does not open: {exc}")
            for journal in (folder, *other_spelling_folders(url, folder)):
                _journals(report, url, journal, None, replay=False)
            return report
    try:
        _check_store(report, led, repair, progress)
        _journals(report, url, folder, led, replay=replay, progress=progress)
        for other in other_spelling_folders(url, folder):
            _journals(report, url, other, led, replay=replay, progress=progress)
    except LedgerError as exc:
        report.add(False, str(exc))
    finally:
        if ledger is None:
            led.close()
    return report


def _check_store(report: DoctorReport, led: Ledger, repair: bool, progress: StepProgress | None = None) -> None:
    step: StepProgress = progress or (lambda _what, _done, _total: None)
    version, latest = led.schema_version, led.latest_schema_version
    if version is not None:
        report.add(version == latest, f"schema version {version} (this router writes {latest})")
    step("integrity check", 0, None)
    problems = led.integrity_problems()
    report.add(not problems, "integrity check: " + ("ok" if not problems else "; ".join(problems[:5])))
    holds = led.hold_counts()
    if holds is not None:
        report.add(True, f"budget holds: {holds.live} of calls that may be running ({holds.live_j:.4g} J), "
                   f"{holds.expired} past their expiry ({holds.expired_j:.4g} J: a killed worker's, no longer "
                   f"counted), {holds.unbounded} without an expiry ({holds.unbounded_j:.4g} J, counted until their "
                   "window ends)")
    n, examples = summary_mismatches(led, progress=progress)
    rolled, rolled_examples = rollup_mismatches(led)
    if (n or rolled) and repair:
        step("rebuilding the hourly summary from the records", 0, None)
        led.rebuild_summary()  # the rollup with it
        report.actions.append(f"rebuilt the hourly summary from the records ({n + rolled} rows disagreed)")
        n, examples = summary_mismatches(led, progress=progress)
        rolled, rolled_examples = rollup_mismatches(led)
    if n:
        report.add(False, f"hourly summary: {n} rows disagree with the records (e.g. {examples[0]}); "
                   "`router ledger doctor --repair` rebuilds it")  # fmt: skip
    else:
        report.add(True, "hourly summary matches the records")
    if rolled:
        report.add(False, f"hourly rollup (the dashboard's totals and series, the report's default view): {rolled} "
                   f"rows disagree with the records (e.g. {rolled_examples[0]}); `router ledger doctor --repair` "
                   "rebuilds it")  # fmt: skip
    elif isinstance(led, RollupFolding):
        report.add(True, "hourly rollup matches the records")


def _journals(
    report: DoctorReport, url: str, folder: Path, led: Ledger | None, *, replay: bool,
    progress: StepProgress | None = None,
) -> None:
    conflict = store_note_conflict(folder, url)
    if conflict is not None:  # its records are another store's: counted, never replayed here
        report.add(False, str(conflict))
        led = None
    files = segment_files(folder)
    dead: list[Path] = []
    live: list[Path] = []
    unreadable: list[str] = []
    for path in files:
        try:
            with claim(path) as fd:
                (live if fd is None else dead).append(path)
        except PermissionError as exc:  # another user's: neither counted as live nor replayable by this one
            unreadable.append(str(unreadable_error(url, folder, exc)))
    live = [p for p in live if p.exists()]
    waiting = sum(_count_lines(p, records_only=True) for p in dead)
    if not files:
        report.add(True, f"journal {folder}: nothing pending")
    if live:
        live_records = sum(_count_lines(p, records_only=True) for p in live)
        report.add(True, f"journal {folder}: {len(live)} file(s) of running processes "
                   f"({live_records} records; they replay their own)")  # fmt: skip
    if dead:
        if replay and led is not None:
            on_file = None if progress is None else (lambda done, total: progress(
                f"replaying the journals of stopped processes: {done:,} of {total:,} files", done, total))
            result = replay_folder(folder, led.record_many, led.settle_many, on_file=on_file, url=url)
            unreadable += [str(error) for error in result.unreadable if str(error) not in unreadable]
            report.actions.append(f"replayed {result.records} journaled records from {result.files} file(s) "
                                  f"of stopped processes into the store")  # fmt: skip
            report.add(True, f"journal {folder}: {result.files} file(s) of stopped processes replayed")
        else:
            report.add(False, f"journal {folder}: {len(dead)} file(s) of stopped processes hold {waiting} records "
                       "not yet replayed" + ("" if led is None else "; run without --no-replay"))  # fmt: skip
    for problem in unreadable:
        report.add(False, problem)
    rejected = folder / "rejected.jsonl"
    if rejected.exists():
        # a problem until someone has dealt with it: nothing retries these records, so they are lost otherwise
        report.add(False, f"{_count_lines(rejected)} records the store refused (or journal lines that did not "
                   f"parse) are set aside in {rejected} and will not be retried: the store lacks them; fix: look "
                   "at the file (the router's log says why each was refused), then move or delete it")  # fmt: skip
