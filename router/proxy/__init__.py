"""The OpenAI-compatible HTTP proxy (``router serve``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import app_from_env, create_app

__all__ = ["app_from_env", "create_app"]


def __getattr__(name: str) -> Any:
    # imported on first use: the batch scheduler shows errors as the proxy does (``router.proxy.public``) and a
    # library user running batches should not load FastAPI and the whole app for it
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
