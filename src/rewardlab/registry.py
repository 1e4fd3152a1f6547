"""The one registry type behind every algorithm axis.

Each axis (advantages, policy losses, KL estimators, aggregations, rewards, ...) is a
``Registry`` of small pure functions. An entry records its paper and its parameters, so that
the trainer can call any entry by name with the batch fields it asks for, configs can validate
parameters by name, and ``rewardlab list`` and the catalogue come straight from here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from rewardlab.errors import RegistryError, did_you_mean


@dataclass(frozen=True)
class Entry:
    """One registered function and what is known about it."""

    name: str
    fn: Callable[..., Any]
    axis: str
    paper: str
    arxiv: str | None
    formula: str
    inputs: tuple[str, ...]
    params: Mapping[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (used by `rewardlab list --json` and the catalogue)."""
        return {
            "axis": self.axis,
            "name": self.name,
            "paper": self.paper,
            "arxiv": self.arxiv,
            "formula": self.formula,
            "inputs": list(self.inputs),
            "params": {k: _jsonable(v) for k, v in self.params.items()},
        }


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool, type(None), list)) else repr(value)


class Registry:
    """Named functions of one axis.

    A function's keyword-only parameters are its hyperparameters; its other parameters are
    the batch fields it reads (``rewards``, ``group``, ``mask``, ``logp`` ...).
    """

    def __init__(self, axis: str) -> None:
        self.axis = axis
        self._entries: dict[str, Entry] = {}

    def register(
        self, name: str, *, paper: str, arxiv: str | None = None, formula: str = ""
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator that adds a function under ``name``."""

        def add(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._entries:
                raise ValueError(f"{self.axis}: '{name}' is registered twice")
            inputs, params = _split_signature(fn)
            self._entries[name] = Entry(name, fn, self.axis, paper, arxiv, formula, inputs, params)
            return fn

        return add

    def get(self, name: str) -> Entry:
        """The entry called ``name``; an unknown name lists the valid ones."""
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.axis} '{name}'{did_you_mean(name, self._entries)}; "
                f"choose one of: {', '.join(sorted(self._entries))}"
            ) from None

    def check_params(self, name: str, params: Mapping[str, Any], where: str) -> None:
        """Reject parameters that ``name`` does not take, naming the config key ``where``."""
        entry = self.get(name)
        for key in params:
            if key not in entry.params:
                raise RegistryError(
                    f"{where}: '{name}' has no parameter '{key}'{did_you_mean(key, entry.params)}; "
                    f"its parameters are: {', '.join(entry.params) or '(none)'}"
                )

    def call(self, name: str, fields: Mapping[str, Any], params: Mapping[str, Any]) -> Any:
        """Call ``name`` with the batch fields it reads, taken from ``fields``, plus ``params``."""
        entry = self.get(name)
        missing = [k for k in entry.inputs if k not in fields]
        if missing:
            raise RegistryError(
                f"{self.axis} '{name}' needs batch fields {missing} that this run does not provide"
            )
        return entry.fn(**{k: fields[k] for k in entry.inputs}, **params)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries[n] for n in self.names())

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def _split_signature(fn: Callable[..., Any]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Positional-or-keyword parameters are batch inputs; keyword-only ones are hyperparameters."""
    inputs: list[str] = []
    params: dict[str, Any] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            params[p.name] = None if p.default is inspect.Parameter.empty else p.default
        elif p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.POSITIONAL_ONLY):
            inputs.append(p.name)
    return tuple(inputs), params
