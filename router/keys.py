"""API keys: who may call the proxy, and which policy each key's requests get (library and proxy alike).

Keys are configured in the router config under ``keys`` (or a separate YAML file given to ``router serve
--keys``), one entry per key, and are only ever held as SHA-256 digests::

    keys:
      - name: team-a                 # shown nowhere but in this file; metrics and the ledger use the key's id
        sha256: 9f86d08...           # sha256 of the key: printf %s "$KEY" | sha256sum
        policy: eco                  # optional: the policy for model="router" (default: the config's)
        admin: true                  # optional: may open the dashboard and score any response; default false
        lock_policy: true            # optional: refuse requests that name another policy (403); default false
        id: key-2c26b46b68ffc68f     # optional: the id it goes by (default: from its sha256); see *Rotation*
      - name: ci
        env: ROUTER_KEY_CI           # or: read the key from this environment variable at start-up

One hash: a key's id, ``key-`` + the first 16 hex digits of its SHA-256 (:func:`hash_key`), is what the ledger,
the metrics and policy files (per-key budgets) name it by; the full digest is what authenticates it. This file
is the one place a key is given a policy. Without ``lock_policy`` that policy is only the key's default: a request
may name another (``router:<policy>`` or a body ``policy``), and with it leave the per-key budgets of its own. A
key in clear text is refused (``key:`` is not a field), so config files can be committed.
A key that would be refused on every request is refused at start instead (``ConfigError`` naming its ``name``
and id): a ``policy`` that does not exist, or a policy file's ``keys`` entry for it whose ``allowed_models`` share
no model with that policy's.

Rotation: a new key has a new digest, so by default a new id, and with it fresh per-key budget counters and none
of the policy files' ``keys:`` entries of the key it replaces (its budgets and overrides would not apply). An
entry's ``id`` keeps the old one: give the new key's entry ``id: <the old key's id>`` and it carries on with the
old key's budgets (what they have spent this window included), policy entries and ledger history. Entries may
share an id: the old and new keys, both valid while clients move over, then spend from the same budgets.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import NOT_A_VARIABLE, names_a_variable
from .errors import ConfigError
from .yaml_files import read_yaml

MAX_KEY_CHARS = 4096
"""The longest API key a request may carry (a longer ``api_key`` is a 400; a configured one is refused at start)."""


def digest(key: str) -> str:
    """The SHA-256 of a key, in hex: what authenticates it."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(sha256: str) -> str:
    """A key's id from its digest: ``key-`` + 16 hex digits, what the ledger, metrics and policies show."""
    return "key-" + sha256[:16]


KEY_ID = re.compile(r"^key-[0-9a-f]{16}$")
"""What an id looks like (:func:`key_id`): the form an entry's ``id`` must take."""


def hash_key(api_key: str | None) -> str | None:
    """A clear key's id (``None`` for no key): keys never reach the ledger, metrics or logs in clear."""
    return key_id(digest(api_key)) if api_key else None


def _check_key_allows_a_model(spec: KeySpec, policy: Any) -> None:
    """A policy's ``keys`` entry for ``spec`` narrows the policy's ``allowed_models`` to those both allow: with none
    in common, every request of the key under that policy would be a 400 (no model may answer it)."""
    entry = policy.key_policy(spec.key_hash)
    if entry is None or entry.allowed_models is None:
        return
    both = set(entry.allowed_models)
    if policy.allowed_models is not None:
        both &= set(policy.allowed_models)
    if both:
        return
    own = ", ".join(entry.allowed_models) or "nothing"
    narrowed = "" if policy.allowed_models is None else (
        f", and the policy's `allowed_models` ({', '.join(policy.allowed_models)}) has none of them")
    raise ConfigError.at(
        getattr(policy, "file", None) or f"policy `{policy.name}`", f"keys[key_hash={spec.key_hash}].allowed_models",
        f"API key {spec.name!r} ({spec.key_hash}) could be answered by no model under policy `{policy.name}`: its "
        f"entry there allows {own}{narrowed}, so every request of that key under this policy would be refused (400)",
        "give the entry a model the policy allows, or remove the entry's `allowed_models`")


@dataclass(frozen=True)
class KeySpec:
    name: str
    sha256: str
    policy: str | None = None
    admin: bool = False
    """May open the dashboard (``/dashboard``) and score any response (``POST /v1/feedback``), not only those it
    made, when keys are configured."""
    lock_policy: bool = False
    """Its requests always run under its policy (the config's default without one): naming another is refused."""
    id: str | None = None
    """The id it goes by where not the one of its digest: a rotated key's entry keeps the old key's (*Rotation*)."""

    @property
    def key_hash(self) -> str:
        """Its id in the ledger, metrics and policy files (its ``id``, else the one of its digest)."""
        return self.id or key_id(self.sha256)


class KeyStore:
    """Looks keys up by digest: the clear key is hashed per request and never stored."""

    def __init__(self, specs: Iterable[KeySpec] = ()) -> None:
        self._by_digest: dict[str, KeySpec] = {}
        for spec in specs:
            if spec.sha256 in self._by_digest:
                raise ConfigError(f"API key {spec.name!r} duplicates key {self._by_digest[spec.sha256].name!r}")
            self._by_digest[spec.sha256] = spec

    def __bool__(self) -> bool:
        return bool(self._by_digest)

    def __len__(self) -> int:
        return len(self._by_digest)

    def __iter__(self) -> Iterator[KeySpec]:
        return iter(self._by_digest.values())

    def check_policies(self, policies: Collection[str] | Mapping[str, Any]) -> None:
        """Every key's policy is one of ``policies``, and (given the policies themselves, by name) no policy's
        ``keys`` entry for a key leaves it no model: either would otherwise fail each of that key's requests with a
        400 long after start. Errors name the key's entry (``name``) and id, never the key."""
        for spec in self:
            if spec.policy is not None and spec.policy not in policies:
                raise ConfigError(f"API key {spec.name!r} has policy {spec.policy!r}, which is not a policy here "
                                  f"({', '.join(sorted(policies))}); fix the name")
        if isinstance(policies, Mapping):
            for policy in policies.values():
                for spec in self:
                    _check_key_allows_a_model(spec, policy)

    def lookup(self, key: str | None) -> KeySpec | None:
        if not key:
            return None
        return self._by_digest.get(digest(key))

    def key_hash(self, key: str | KeySpec | None) -> str | None:
        """The id a request with ``key`` is recorded and budgeted under: its entry's (which a rotated key's ``id``
        carries over), else the one of its digest (no keys configured)."""
        if isinstance(key, KeySpec):
            return key.key_hash
        spec = self.lookup(key)
        return spec.key_hash if spec is not None else hash_key(key)

    def spec_for_digest(self, sha256: str) -> KeySpec:
        """The configured key with this digest, or an unnamed one without a policy (a key that was accepted when
        no keys were configured): what work submitted earlier under that key runs as (batches)."""
        return self._by_digest.get(sha256) or KeySpec(name=key_id(sha256), sha256=sha256)

    @classmethod
    def from_entries(cls, entries: Any, where: str = "keys") -> KeyStore:
        """Build from the ``keys`` list of a config (see the module docstring)."""
        if entries is None:
            return cls()
        if isinstance(entries, KeyStore):
            return entries
        if isinstance(entries, Mapping):  # {clear_key: policy} given in code (tests, embedding apps)
            return cls(KeySpec(name=f"key-{i}", sha256=digest(str(k)), policy=v)
                       for i, (k, v) in enumerate(entries.items()))
        if not isinstance(entries, list):
            raise ConfigError(f"{where}: `keys` must be a list of {{name, sha256 | env, policy}}")
        specs = []
        for i, raw in enumerate(entries):
            if isinstance(raw, KeySpec):
                specs.append(raw)
                continue
            if not isinstance(raw, Mapping):
                raise ConfigError(f"{where}: keys[{i}] must be a mapping with name, sha256 (or env) and policy")
            extra = set(raw) - {"name", "sha256", "env", "policy", "admin", "lock_policy", "id"}
            if extra:
                hint = " (store the sha256 of the key, never the key)" if "key" in extra else ""
                raise ConfigError(f"{where}: keys[{i}]: unknown field(s) {', '.join(sorted(extra))}{hint}")
            name = str(raw.get("name") or f"key-{i}")
            if raw.get("sha256"):
                sha = str(raw["sha256"]).strip().lower()
                if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
                    raise ConfigError(f"{where}: keys[{i}] ({name}): `sha256` must be 64 hex digits")
            elif raw.get("env"):
                if not names_a_variable(str(raw["env"])):  # a key pasted there: never repeated
                    raise ConfigError(f"{where}: keys[{i}] ({name}): `env`: {NOT_A_VARIABLE}")
                value = os.environ.get(str(raw["env"]))
                if not value:
                    raise ConfigError(f"{where}: keys[{i}] ({name}): environment variable {raw['env']} is not set")
                if not (value.isascii() and value.isprintable()) or len(value) > MAX_KEY_CHARS:
                    # a request's header is read as latin-1 and clients (httpx, the openai SDK) refuse to send other
                    # characters, so such a key would authenticate no request
                    raise ConfigError(f"{where}: keys[{i}] ({name}): environment variable {raw['env']} holds a key no "
                                      f"client can send: an API key is printable ASCII of at most {MAX_KEY_CHARS:,} "
                                      "characters; fix: make a new key of such characters")
                sha = digest(value)
            else:
                raise ConfigError(f"{where}: keys[{i}] ({name}): give `sha256` (of the key) or `env`")
            policy = raw.get("policy")
            flags = {field: raw.get(field, False) for field in ("admin", "lock_policy")}
            for field, value in flags.items():
                if not isinstance(value, bool):
                    raise ConfigError(f"{where}: keys[{i}] ({name}): `{field}` must be true or false, "
                                      f"got {type(value).__name__}")
            given_id = raw.get("id")
            if given_id is not None and not (isinstance(given_id, str) and KEY_ID.match(given_id)):
                raise ConfigError(f"{where}: keys[{i}] ({name}): `id` must be a key id, `key-` and 16 hex digits as "
                                  "the ledger shows it (the id of the key this one replaces), got "
                                  f"{given_id!r}")
            specs.append(KeySpec(name=name, sha256=sha, policy=str(policy) if policy else None, id=given_id,
                                 **flags))
        return cls(specs)

    @classmethod
    def from_file(cls, file: str | Path) -> KeyStore:
        """A keys file: a list of entries, or a mapping with ``keys`` (or ``extra.keys``) holding that list.

        Stricter than :meth:`from_entries`, which also takes ``{clear_key: policy}`` from code: in a file every
        entry is a mapping of text fields, and a key never appears in clear."""
        path = Path(file)
        data = read_yaml(path, "keys file")[0]
        if data is None:  # PyYAML reads an empty file, or one of comments only, as null
            raise ConfigError(f"{path}: the keys file is empty (no YAML in it, at most comments); fix: write `keys:` "
                              "followed by one `- name: ...` entry per key")
        if isinstance(data, Mapping):
            extra = data.get("extra")
            data = data["keys"] if "keys" in data else extra.get("keys") if isinstance(extra, Mapping) else None
        if not isinstance(data, list):
            raise ConfigError(
                f"{path}: field `keys`: expected a list of {{name, sha256 | env, policy}}, got "
                f"{type(data).__name__}; fix: write `keys:` followed by one `- name: ...` entry per key"
            )
        for i, entry in enumerate(data):
            for field, value in entry.items() if isinstance(entry, Mapping) else ():
                plain = value is None or (isinstance(value, str | int) and not isinstance(value, bool)) or (
                    field in ("admin", "lock_policy") and isinstance(value, bool))
                if not isinstance(field, str) or not plain:
                    raise ConfigError(
                        f"{path}: field `keys[{i}].{field}`: expected a text field name and a text value, got "
                        f"{type(field).__name__}: {type(value).__name__}; fix: write `name: value` with plain text"
                    )
        return cls.from_entries(data, where=str(path))
