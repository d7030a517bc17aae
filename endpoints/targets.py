"""Serving targets: what a URL names besides a version, and what has its own compute config.

A target is a registry stage (``Production``, ``Staging``) or an MLflow alias, written
``@<alias>`` (``@champion``) exactly as it appears in a scoring URL
(``/model-endpoint/<name>/@champion/invocations``). Stage names never start with ``@``, so
one string names either kind; compute configs and serving pointers are keyed by it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# The registry stages that are served (``models.Stage``'s values; this module sits below
# the models, which use it).
STAGES = ("Staging", "Production")

ALIAS_PREFIX = "@"
# The longest target: "@" and an alias of MLflow's longest (255 characters).
TARGET_MAX_LENGTH = 256
# MLflow's own rule for alias names (word characters and dashes, at most 255 of them;
# "latest" and "v<digits>" are reserved by MLflow).
_ALIAS_NAME = re.compile(r"^[\w\-]{1,255}$")
_RESERVED = re.compile(r"^(latest|[vV]\d+)$", re.IGNORECASE)


def alias_target(alias: str) -> str:
    return ALIAS_PREFIX + alias


def is_alias(target: str) -> bool:
    return target.startswith(ALIAS_PREFIX)


def alias_name(target: str) -> str:
    return target[len(ALIAS_PREFIX) :]


def valid_alias(alias: str) -> bool:
    return bool(_ALIAS_NAME.match(alias)) and not _RESERVED.match(alias)


def valid_target(target: str) -> bool:
    return target in STAGES or (is_alias(target) and valid_alias(alias_name(target)))


def version_targets(stage: str, aliases: Iterable[str]) -> tuple[str, ...]:
    """The targets a version serves: its stage (if any) first, then its aliases by name."""
    return ((stage,) if stage else ()) + tuple(alias_target(a) for a in sorted(aliases))


def config_target(stage: str, aliases: Iterable[str]) -> str:
    """The target whose compute config a version runs with.

    A version runs once, however many targets it serves: with its stage's config when it
    has a stage (so adding an alias to a Production version changes nothing that runs),
    else with that of its first alias by name."""
    served = version_targets(stage, aliases)
    return served[0] if served else ""


def served_aliases(registry: Mapping[str, str], allowed: Iterable[str] | None) -> dict[str, str]:
    """{alias: version} of the registry's aliases that the endpoint serves (``allowed``
    None: every alias)."""
    keep = None if allowed is None else set(allowed)
    return {
        alias: version
        for alias, version in registry.items()
        if valid_alias(alias) and (keep is None or alias in keep)
    }
