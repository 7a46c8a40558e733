"""``router batch``: the batches in the store, their progress and the scheduler's plan."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from .._dates import utc_minute
from ..ledger.errors import redact
from .output import stdout_console

batch_app = typer.Typer(help="Deferrable work sent through the Batch API: list batches, show one's progress.",
                        no_args_is_help=True, rich_markup_mode=None)

_CONFIG = typer.Option(None, "--config", "-c", help="Router config YAML (its ledger and batch store).")
_STORE = typer.Option(None, "--store", help="Batch store URL (sqlite:///PATH or postgresql://...); default: config.")


def _store(config: Path | None, store: str | None) -> tuple[Any, Path | None]:
    """(the batch store, None) or, where it is a SQLite file that is not there, (None, its path): a listing reads,
    and opening the store would create the file and its folders."""
    from ..batch.store import BatchStore, default_store_url, sqlite_path
    from ..config import RouterConfig
    from ..errors import RouterError

    try:
        cfg = RouterConfig.load(config)
        url = store or cfg.batch.store_url or default_store_url(cfg.ledger_url)
        path = sqlite_path(url)
        if path is not None and str(path) != ":memory:" and not path.exists():
            return None, path
        return BatchStore(url), None
    except RouterError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {escape(exc.message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _when(ts: Any) -> str:
    return "-" if not ts else utc_minute(ts)


@batch_app.command("list")
def list_batches(config: Path | None = _CONFIG, store: str | None = _STORE,
                 limit: int = typer.Option(20, "--limit", min=1, help="Newest first, this many.")) -> None:
    """Every batch in the store (all API keys), newest first, with its progress."""
    st, missing = _store(config, store)
    if st is None:
        Console().print(f"no batches yet: no batch store at {escape(str(missing))}", highlight=False, soft_wrap=True)
        return
    docs = st.all_batches(limit)
    table = Table(title=f"Batches in {escape(redact(st.url))}")  # never a PostgreSQL password
    # ids are what `router batch show` takes, and statuses are single words: never cut, whatever the width; the
    # other columns wrap instead
    for col in ("id", "status"):
        table.add_column(col, no_wrap=True, min_width=max((len(d[col]) for d in docs), default=len(col)))
    for col in ("done", "failed", "total", "created", "expires", "plan"):
        table.add_column(col, justify="right" if col in ("done", "failed", "total") else "left", overflow="fold")
    for doc in docs:
        c = doc["request_counts"]
        table.add_row(doc["id"], doc["status"], f"{c['completed']:,}", f"{c['failed']:,}", f"{c['total']:,}",
                      _when(doc["created_at"]), _when(doc["expires_at"]), (doc.get("carbon") or {}).get("plan", ""))
    stdout_console().print(table)
    st.close()


@batch_app.command("show")
def show(batch_id: str = typer.Argument(..., help="The batch's id (batch_...)."), config: Path | None = _CONFIG,
         store: str | None = _STORE,
         follow: bool = typer.Option(False, "--follow", "-f", help="Keep the progress bar going until it ends.")
         ) -> None:
    """One batch: status, times, the scheduler's plan and a progress bar of its lines."""
    st, missing = _store(config, store)
    if st is None:
        Console(stderr=True).print(f"[red]error:[/red] no batch {escape(repr(batch_id))}: no batch store at "
                                   f"{escape(str(missing))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    got = st.get_batch(batch_id)
    if got is None:
        Console(stderr=True).print(f"[red]error:[/red] no batch {escape(repr(batch_id))} in {escape(redact(st.url))}",
                                   highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    doc = got[0]
    out = Console()
    out.print(f"[bold]{escape(str(doc['id']))}[/bold]  {doc['status']}  endpoint {escape(str(doc['endpoint']))}, "
              f"window {doc['completion_window']}, input {escape(str(doc['input_file_id']))}")
    for field in ("created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at",
                  "expired_at", "cancelling_at", "cancelled_at"):
        if doc.get(field):
            out.print(f"  {field:15} {_when(doc[field])}")
    plan = doc.get("carbon") or {}
    if plan:
        zone = escape(str(plan.get("zone")))
        out.print(f"  plan: {plan.get('plan')} (forecast: {plan.get('forecast')}, zone {zone})")
    for field in ("output_file_id", "error_file_id"):
        if doc.get(field):
            out.print(f"  {field}: {escape(str(doc[field]))}")
    for err in ((doc.get("errors") or {}).get("data") or [])[:10]:
        out.print(f"  [red]line {err.get('line')}[/red]: {err.get('code')}: {escape(str(err.get('message')))}")
    with Progress(TextColumn("lines"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                  console=out) as bar:
        c = doc["request_counts"]
        task = bar.add_task("", total=max(1, c["total"]))
        while True:
            c = doc["request_counts"]
            bar.update(task, completed=c["completed"] + c["failed"], description=f"{c['failed']} failed; "
                       f"{doc['status']}")
            if not follow or doc["status"] in ("completed", "failed", "expired", "cancelled"):
                break
            time.sleep(1.0)
            doc = st.get_batch(batch_id)[0]
    st.close()
