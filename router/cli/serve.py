"""``router serve``: the OpenAI-compatible proxy under uvicorn."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from ..errors import ConfigError

if TYPE_CHECKING:
    import uvicorn


def serve(
    ctx: typer.Context,
    # A container or Kubernetes deployment sets these in the environment instead of rewriting the command.
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for every interface).",
                             envvar="ROUTER_HOST"),
    port: int = typer.Option(8000, "--port", help="Port to listen on.", envvar="ROUTER_PORT"),
    workers: int = typer.Option(
        1, "--workers", min=1, help="Worker processes; more than 1 needs a ledger they share (Redis or PostgreSQL).",
        envvar="ROUTER_WORKERS"),
    root_path: str = typer.Option(
        "", "--root-path", help="The path prefix a reverse proxy serves the router under (/router): requests are "
        "answered with or without it, so the proxy may strip it or pass it on.", envvar="ROUTER_ROOT_PATH"),
    # The worker processes read the config and keys files from these variables (router.proxy.app.app_from_env),
    # so one set before the command is what they serve: the checks below and the start-up line must read it too.
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="Router config YAML (models, policies, ledger, keys, proxy settings).", exists=True,
        dir_okay=False, envvar="ROUTER_PROXY_CONFIG")] = None,
    keys: Annotated[Path | None, typer.Option(
        "--keys", help="API keys YAML (overrides `keys` in the config).", exists=True, dir_okay=False,
        envvar="ROUTER_PROXY_KEYS")] = None,
    ledger_url: Annotated[str | None, typer.Option(
        "--ledger", help="Ledger URL (sqlite:///PATH, redis://HOST:PORT/DB or postgresql://USER:PASSWORD@HOST/DB); "
        "overrides the config and ROUTER_LEDGER_URL.")] = None,
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = typer.Option(
        "warning", "--log-level", help="Log level of uvicorn's lines and router's own, in every worker process "
        "(router's own at least info with `router -v`)."),
    access_log: bool = typer.Option(
        False, "--access-log/--no-access-log", help="Log every request line (at any --log-level)."),
    proxy_headers: Annotated[bool | None, typer.Option(
        "--proxy-headers/--no-proxy-headers", help="Take the client address from X-Forwarded-For (from "
        "--forwarded-allow-ips). Only the access log shows client addresses, so the default is on with "
        "--access-log and off without it.")] = None,
    forwarded_allow_ips: str = typer.Option(
        "127.0.0.1", "--forwarded-allow-ips", help="Comma-separated addresses trusted to set X-Forwarded-*."),
) -> None:
    """Start the OpenAI-compatible proxy: point any OpenAI client at http://HOST:PORT/v1."""
    import uvicorn

    from ..config import RouterConfig
    from ..proxy.app import ENV_CONFIG, ENV_KEYS, ENV_LISTEN_HOST
    from ..proxy.metrics_shared import ENV_METRICS_DIR

    # Every worker process builds its own Router from these (uvicorn spawns workers; they inherit the env).
    if ledger_url:
        os.environ["ROUTER_LEDGER_URL"] = ledger_url
    if config is not None:
        # absolute, links kept: a config's relative paths are relative to the folder it was named in (as
        # RouterConfig.load reads them below), not to the folder a linked file lives in
        os.environ[ENV_CONFIG] = str(config.absolute())
    if keys is not None:
        os.environ[ENV_KEYS] = str(keys.resolve())
    os.environ[ENV_LISTEN_HOST] = host  # on a loopback address, other Host names are refused (DNS rebinding)
    try:
        cfg = RouterConfig.load(config)  # fail here, once, with a clear message, not in every worker
    except ConfigError as exc:
        typer.echo(f"router serve: {exc}", err=True)
        raise typer.Exit(2) from None
    shared = ("redis://", "rediss://", "unix://", "postgresql://", "postgres://")
    if workers > 1 and not cfg.ledger_url.lower().startswith(shared):
        # name what set the count (a container sets ROUTER_WORKERS); the source compared by name: typer carries
        # its own copy of click, whose ParameterSource is not click's
        source = ctx.get_parameter_source("workers")
        from_env = source is not None and source.name == "ENVIRONMENT"
        name = "ROUTER_WORKERS=" if from_env else "--workers "
        typer.echo(
            f"router serve: {name}{workers}: worker processes share energy budgets through a Redis or PostgreSQL "
            f"ledger, but the ledger is {cfg.ledger_url!r}. Pass --ledger redis://127.0.0.1:6379/0 or "
            "--ledger postgresql://USER:PASSWORD@HOST/DB (or set ROUTER_LEDGER_URL or ledger_url in --config). "
            f"SQLite is the single-process default: use {name}1 with it.", err=True
        )
        raise typer.Exit(2)
    if not cfg.batch.store_url and cfg.ledger_url.lower().startswith(("redis://", "rediss://", "unix://")):
        from ..batch.store import default_store_url

        # Redis cannot hold batches: they go to a SQLite file on this host, which other hosts never see
        typer.echo(f"router serve: warning: batches are stored in {default_store_url(cfg.ledger_url)} (the user data "
                   "dir, shared with library scripts on this host): the ledger is Redis and batch.store_url is not "
                   "set. A fleet of hosts sets batch.store_url to PostgreSQL (docs/batch.md).", err=True)
    root_path = "/" + root_path.strip("/") if root_path.strip("/") else ""  # "router/" means "/router"
    if not all(" " < c <= "~" and c not in "?#" for c in root_path):  # uvicorn sends it as ASCII in every path
        typer.echo(f"error: --root-path {root_path!r} is not a URL path: give printable ASCII without spaces, '?' "
                   "or '#', such as /router", err=True)
        raise typer.Exit(2)
    problem = _cannot_listen(host, port)  # before the models load: that takes seconds, and then all is in vain
    if problem is not None:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    from ..ledger.errors import redact
    from ..proxy.server import OneWriteHttpToolsProtocol

    settings = uvicorn.Config(
        "router.proxy.app:app_from_env", factory=True, host=host, port=port, workers=workers,
        log_config=_log_config(log_level, access_log), access_log=access_log, timeout_keep_alive=30,
        # without it uvicorn waits for every running request after SIGTERM, a stream of minutes included; each
        # worker of --workers gets this Config too
        # uvicorn passes it to asyncio.wait_for, which takes seconds as a float: its `int` is too narrow
        timeout_graceful_shutdown=cfg.proxy.shutdown_timeout_s,  # type: ignore[arg-type]
        # uvicorn's X-Forwarded-* middleware runs on every request (~5 µs of CPU, ~2 % of the proxy's own) and
        # only changes the client address, which nothing but the access log reads; no `server: uvicorn` header
        proxy_headers=access_log if proxy_headers is None else proxy_headers,
        forwarded_allow_ips=forwarded_allow_ips, server_header=False,
        # each request's scope["root_path"]; router.proxy.app.ProxyApp routes paths with and without it
        root_path=root_path,
        # router/proxy/server.py: one write per loop iteration, and a deadline on each request's headers
        http=OneWriteHttpToolsProtocol, loop="uvloop" if _uvloop() else "auto",  # "auto": uvicorn's default
    )
    # The socket listens before the models load (as a pre-fork server's does): each worker's "ready" line then
    # means what it says, and a client that connects meanwhile waits instead of being refused.
    sock = settings.bind_socket()
    sock.listen(settings.backlog)
    # uvicorn's own lines are off at the default log level: say where the proxy listens and what it serves
    under = f", or under {root_path} through the reverse proxy" if root_path else ""
    typer.echo(f"router serve: {_base_url(host, sock.getsockname()[1])} (an OpenAI client's base_url{under}), "
               f"{workers} worker{'s' if workers > 1 else ''}; models from {cfg.models_dir}, policy "
               f"{cfg.default_policy}, ledger {redact(cfg.ledger_url)}; loading the models ...", err=True)
    os.environ.pop(ENV_METRICS_DIR, None)  # only this run's directory, and none for one process
    try:
        if workers > 1:
            import shutil
            import tempfile

            from uvicorn.config import STARTUP_FAILURE
            from uvicorn.supervisors import Multiprocess

            # each worker writes its counts here and every worker's /metrics adds them all (router/proxy/metrics.py)
            metrics_dir: str | None = None
            try:
                metrics_dir = tempfile.mkdtemp(prefix=f"router-metrics-{os.getpid()}-")
                os.environ[ENV_METRICS_DIR] = metrics_dir
            except OSError as exc:
                typer.echo(f"router serve: warning: cannot make a folder for the workers' metrics ({exc}): each "
                           "worker's /metrics counts its own requests only. Set TMPDIR to a writable folder.",
                           err=True)
            supervisor = Multiprocess(settings, sockets=[sock])
            try:
                supervisor.run()
            finally:
                if metrics_dir is not None:
                    shutil.rmtree(metrics_dir, ignore_errors=True)
            if any(worker.exitcode == STARTUP_FAILURE for worker in supervisor.processes):
                raise typer.Exit(2)  # the worker printed why (router.proxy.app.app_from_env)
        else:
            server = uvicorn.Server(settings)
            _stop_on_hangup(server)
            server.run(sockets=[sock])
            if not server.started:
                raise typer.Exit(3)  # uvicorn's exit status for a server that did not start
    except KeyboardInterrupt:
        pass


def _stop_on_hangup(server: uvicorn.Server) -> None:
    """SIGHUP (``kill -HUP``, ``systemctl reload``, the terminal closing) stops ``server`` as SIGTERM does: requests
    in flight get ``proxy.shutdown_timeout_s`` and the ledger writer empties. uvicorn handles SIGINT and SIGTERM
    only, and SIGHUP's default action would end the process at once, cutting every request in flight without an
    answer or a ledger record. (With ``--workers N`` uvicorn's supervisor takes SIGHUP: it replaces the workers
    one at a time, each new one reading the config and keys files again.)"""
    import signal

    if hasattr(signal, "SIGHUP"):  # not on Windows
        signal.signal(signal.SIGHUP, lambda _sig, frame: server.handle_exit(signal.SIGTERM, frame))


def _log_config(level: str, access_log: bool) -> dict[str, Any]:
    """uvicorn's logging at ``level``, but the access log's lines (at info) at any level when it is asked for:
    uvicorn would hold them to ``level``, so ``--access-log`` alone logged nothing. It also holds this process's
    own logging (the CLI's format; the root logger's level, which ``-v`` sets) with router's loggers at ``level``
    or finer: uvicorn applies this config in every worker process it spawns, which inherit nothing else, so
    their router lines came unformatted and only from warnings up."""
    from uvicorn.config import LOG_LEVELS, LOGGING_CONFIG

    from . import LOG_FORMAT

    config = copy.deepcopy(LOGGING_CONFIG)
    name = level.upper()
    loggers = config["loggers"]
    loggers["uvicorn"]["level"] = loggers["uvicorn.error"]["level"] = name
    loggers["uvicorn.asgi"] = {"level": name}
    loggers["uvicorn.access"]["level"] = "INFO" if access_log and name not in ("DEBUG", "TRACE") else name
    root_level = logging.getLogger().getEffectiveLevel()
    config["formatters"]["router"] = {"format": LOG_FORMAT}
    config["handlers"]["router"] = {"class": "logging.StreamHandler", "formatter": "router",
                                    "stream": "ext://sys.stderr"}
    config["root"] = {"handlers": ["router"], "level": root_level}
    loggers["router"] = {"level": min(LOG_LEVELS[level], root_level)}
    return config


def _base_url(host: str, port: int) -> str:
    """The URL a client uses for the socket bound on ``host``: its real port (``--port 0`` lets the system choose
    one), an IPv6 address in brackets."""
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"


def _cannot_listen(host: str, port: int) -> str | None:
    """Why uvicorn would fail to listen on ``host:port``, or ``None``: a socket bound there as uvicorn binds it
    (IPv6 for an address with ':', ``SO_REUSEADDR``), then closed."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OverflowError:
            return f"--port {port} is not a port (0-65535)"
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (f"port {port} on {host} is in use (another router serve or another program listens there); "
                        "stop it or choose another --port")
            return f"cannot listen on {host} port {port}: {exc.strerror or exc}"
    return None


def _uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:  # Windows: uvloop has no build there; asyncio's own loop serves
        return False
    return True
