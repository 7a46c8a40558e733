"""The OpenAI-compatible HTTP proxy (``router serve``)."""

from __future__ import annotations

from .app import app_from_env, create_app

__all__ = ["app_from_env", "create_app"]
