"""The parts a Router is built from when the caller does not give them: the shipped classifier and the policy
engine over the configured policies."""

from __future__ import annotations

import logging

from .cards import ModelCard
from .classify.base import TASKS, RequestClassifier
from .config import RouterConfig
from .errors import ConfigError
from .policy.base import Engine
from .policy.schema import Policy
from .tools import TOOLS_TASK

log = logging.getLogger("router")


def default_classifier(config: RouterConfig, cards: dict[str, ModelCard]) -> RequestClassifier:
    """The shipped classifier, predicting for this Router's callable cards only."""
    try:
        from .classify.onnx_classifier import OnnxRequestClassifier, load_default_classifier
    except ImportError:
        from .classify.rules import RuleClassifier

        return RuleClassifier(config.classifier_max_chars)
    classifier = load_default_classifier(config.models_dir, max_chars=config.classifier_max_chars)
    if isinstance(classifier, OnnxRequestClassifier):
        callable_cards = {n: c for n, c in cards.items() if c.callable}
        classifier.add_card_priors(callable_cards)
        classifier.only(set(callable_cards))
    return classifier


def load_engine(config: RouterConfig, cards: dict[str, ModelCard], policy_name: str) -> Engine:
    """The policy engine over ``config.policies_dir``; the interim first rule only when no policy file exists.
    What a card may name that the config must know (its grid zone) is checked here too: this is where a Router's
    config and cards first meet."""
    from .policy.loader import check_models, load_policies
    from .yaml_files import yaml_files

    _warn_unconfigured_zones(config, cards)
    folder = config.policies_dir
    if not folder.is_dir():
        # A mistyped folder would otherwise drop every budget the operator wrote without a word.
        raise ConfigError(f"policies_dir {folder} is not a folder; point it at the folder holding your policy YAML "
                          "files, or leave it out for the shipped policies")
    if not yaml_files(folder):
        from .policy.first_rule import FirstRuleEngine

        log.warning("no policies in %s: using the interim first rule", folder)
        return FirstRuleEngine(cards)
    from .policy.engine import PolicyEngine

    policies = load_policies(folder)
    for p in policies.values():
        check_models(p, cards, p.file or "")
        _warn_unknown_pinned_tasks(p)
    if policy_name not in policies:
        raise ConfigError(f"unknown policy {policy_name!r}; {folder} has: {', '.join(sorted(policies))}")
    callable_cards = {n: c for n, c in cards.items() if c.callable}
    return PolicyEngine(callable_cards, policies, default_policy=policy_name)


ROUTED_TASKS = (*TASKS, TOOLS_TASK)
"""The tasks a request is decided as: the shipped classifiers' (rules or ONNX) and ``tools`` (by rule)."""


def _warn_unknown_pinned_tasks(policy: Policy) -> None:
    """A pin for a task no request is classified as never applies (``sentimnt``). Only a warning: a Router built
    with its own classifier (``Router(classifier=...)``) may decide tasks of its own, and this is not told."""
    unknown = sorted(set(policy.pinned) - set(ROUTED_TASKS))
    if unknown:
        log.warning("%s: field `pinned`: no request is classified as task %s, so that pin never applies unless a "
                    "classifier of your own gives it; the tasks are: %s", policy.file or f"policy `{policy.name}`",
                    ", ".join(map(repr, unknown)), ", ".join(ROUTED_TASKS))


def _warn_unconfigured_zones(config: RouterConfig, cards: dict[str, ModelCard]) -> None:
    """A card's ``zone`` with no source among the configured ``carbon.zones`` uses the static grid_g_per_kwh: as
    documented, and fine for a hosted region the operator has no data for, but a misspelt zone looks the same."""
    zones = config.carbon.zones
    if not zones:
        return
    for card in cards.values():
        if card.callable and card.zone is not None and card.zone not in zones:
            log.warning("%s: field `zone`: %r is not one of the configured carbon.zones (%s), so %s's records use "
                        "the static grid_g_per_kwh (%g g/kWh); check the spelling, or add the zone under carbon.zones",
                        card.path or card.name, card.zone, ", ".join(sorted(zones)), card.name,
                        config.grid_g_per_kwh)
