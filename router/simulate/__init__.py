"""Offline policy simulation: replay an outcomes file through the classifier and the policy engine, without
calling any model, and report quality, energy, per-model shares, routing metrics and plots."""

from __future__ import annotations

from .importers import import_routellm
from .outcomes import OutcomesError, OutcomesTable, load_outcomes

__all__ = ["OutcomesError", "OutcomesTable", "import_routellm", "load_outcomes"]
