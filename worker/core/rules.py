"""Policy rules: the first rule whose pattern matches one of a task's capabilities names the policy that governs it
(and may narrow the models allowed); a task no rule matches is governed by the default policy."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

from schemas.policy import PRESETS, PolicyRule, ResourcePolicy
from worker.errors import InvalidRequest


def governing(
    rules: Sequence[PolicyRule], default: ResourcePolicy, policies: dict[str, ResourcePolicy], required: list[str]
) -> tuple[ResourcePolicy, PolicyRule | None]:
    """The policy for a task, and the rule that chose it (None: the default)."""
    for rule in rules:
        if any(fnmatch.fnmatchcase(cap, rule.match) for cap in required):
            return (default if rule.policy == "default" else policies[rule.policy]), rule
    return default, None


def allowed_models(rule: PolicyRule | None) -> set[str] | None:
    """The models a rule allows (None: any)."""
    return set(rule.models) if rule is not None and rule.models is not None else None


def rule_name(rule: PolicyRule | None) -> str | None:
    return None if rule is None else f"{rule.match} -> {rule.policy}"


def check_rules(rules: Sequence[PolicyRule], policies: dict[str, ResourcePolicy]) -> None:
    """Every rule names a known policy (raises InvalidRequest naming the rule)."""
    known = {"default", *PRESETS, *policies}
    for i, rule in enumerate(rules):
        if rule.policy not in known:
            raise InvalidRequest(f"rules[{i}].policy: unknown policy {rule.policy!r}; known: {sorted(known)}")


def rule_conflicts(rules: Sequence[PolicyRule], capabilities: Iterable[str]) -> list[str]:
    """Human-readable notes on rules that another rule shadows for some capability, or that match nothing."""
    caps = list(capabilities)
    notes: list[str] = []
    for i, rule in enumerate(rules):
        matched = [c for c in caps if fnmatch.fnmatchcase(c, rule.match)]
        if not matched:
            notes.append(f"rules[{i}] ({rule.match} -> {rule.policy}) matches no known capability")
            continue
        for cap in matched:
            first = next(j for j, r in enumerate(rules) if fnmatch.fnmatchcase(cap, r.match))
            if first != i and (rules[first].policy != rule.policy or rules[first].models != rule.models):
                other = rules[first]
                notes.append(
                    f"rules[{i}] ({rule.match} -> {rule.policy}) is shadowed for {cap} by rules[{first}] "
                    f"({other.match} -> {other.policy}): the first match wins"
                )
    return notes
