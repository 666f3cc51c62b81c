"""What a command-line override of Hydra's own nodes may name, checked before Hydra composes.

Hydra calls what these nodes name, outside losslab's instantiate allow-list (src/config.py):
- ``hydra.job_logging`` / ``hydra.hydra_logging`` go to ``logging.config.dictConfig``, which
  calls whatever a ``class`` or ``()`` key names: only logging classes of the right kind pass
  (a ``logging.Handler`` under handlers, a ``Formatter`` under formatters, a ``Filter`` under
  filters).
- ``hydra.launcher``, ``hydra.sweeper`` and ``hydra.callbacks`` are instantiated recursively:
  ``+hydra.launcher.x={_target_:pathlib.Path.touch,...}`` ran before this check. A
  ``_target_`` there must be a class from a Hydra plugin, Hydra itself, Optuna (samplers) or
  losslab.

Names are judged by what they resolve to, not how they are spelled. Hydra's own refusals came
as 40-line tracebacks after the output folder (or a sweep's parent run) existed; these are one
line, before anything is created. The config files are the project's own and are not checked.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from src.config import ConfigError

LOGGING_ROOTS = ("hydra.job_logging", "hydra.hydra_logging")
LOGGING_KINDS = {
    "handlers": logging.Handler,
    "formatters": logging.Formatter,
    "filters": logging.Filter,
}
PLUGIN_ROOTS = ("hydra.launcher", "hydra.sweeper", "hydra.callbacks")
PLUGIN_MODULES = ("hydra_plugins.", "hydra.", "optuna.", "src.")


def check(overrides: Sequence[str]) -> None:
    """Raise ConfigError, in one line, for an override of Hydra's nodes that names anything
    but what that node may call."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    roots = LOGGING_ROOTS + PLUGIN_ROOTS
    wanted = [o for o in overrides if o.lstrip("+~").startswith(roots)]
    if not wanted:
        return
    for override in OverridesParser.create().parse_overrides(wanted):
        if override.is_delete():
            continue
        values = (
            list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
        )
        path = override.key_or_group.split(".")
        for value in values:
            if override.key_or_group.startswith(LOGGING_ROOTS):
                for where, name in _named(path, value, ("class", "()")):
                    _judge_logging(where, name)
            else:
                for where, name in _named(path, value, ("_target_",)):
                    _judge_plugin(where, name)


def _named(path: list[str], value: Any, keys: tuple[str, ...]) -> Iterator[tuple[list, Any]]:
    """Every (path, value) under ``value`` whose last key is one of ``keys``."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _named([*path, str(key)], inner, keys)
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from _named([*path, str(index)], inner, keys)
    elif path[-1] in keys:
        yield path, value


def _resolve(where: str, name: Any) -> object:
    from hydra.utils import get_object

    try:
        return get_object(str(name))
    except Exception:
        raise ConfigError(f"{where}={name} names nothing importable") from None


def _spelled(target: object) -> str:
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', target)}"


def _judge_logging(path: list[str], name: Any) -> None:
    where = ".".join(path)
    kind = next((LOGGING_KINDS[part] for part in path if part in LOGGING_KINDS), None)
    if kind is None:
        raise ConfigError(
            f"{where}={name}: a logging override may name a class only under handlers, "
            "formatters or filters"
        )
    target = _resolve(where, name)
    if not (isinstance(target, type) and issubclass(target, kind)):
        raise ConfigError(f"{where}={name} is {_spelled(target)}, not a logging.{kind.__name__}")


def _judge_plugin(path: list[str], name: Any) -> None:
    where = ".".join(path)
    target = _resolve(where, name)
    module = getattr(target, "__module__", "") or ""
    if not (inspect.isclass(target) and f"{module}.".startswith(PLUGIN_MODULES)):
        raise ConfigError(
            f"{where}={name} is {_spelled(target)}; Hydra's launcher, sweeper and callbacks "
            f"may name only classes from {', '.join(m.rstrip('.') for m in PLUGIN_MODULES)}"
        )


def check_logging_references(name: str, node: Any) -> None:
    """What dictConfig would refuse only after Hydra made the output folder: a logger or
    handler naming a handler, formatter or filter the config does not define."""
    if not isinstance(node, dict):
        return
    defined = {kind: set(node.get(kind) or {}) for kind in LOGGING_KINDS}
    users = [("root", node.get("root") or {})]
    users += [(f"loggers.{k}", v or {}) for k, v in (node.get("loggers") or {}).items()]
    users += [(f"handlers.{k}", v or {}) for k, v in (node.get("handlers") or {}).items()]
    for where, user in users:
        wanted = {
            "handlers": user.get("handlers") or [],
            "filters": user.get("filters") or [],
            "formatters": [user["formatter"]] if user.get("formatter") else [],
        }
        for kind, names in wanted.items():
            for missing in [n for n in names if n not in defined[kind]]:
                raise ConfigError(
                    f"{name}.{where} uses the {kind[:-1]} '{missing}', which {name} does not "
                    f"define (it has: {', '.join(sorted(defined[kind])) or 'none'})"
                )
