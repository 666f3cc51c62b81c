"""Turn Hydra's and OmegaConf's multi-line error reports into one line a user can act on."""

from __future__ import annotations

import dataclasses
import re

from hydra.errors import HydraException, MissingConfigException
from omegaconf.errors import OmegaConfBaseException

from src import config


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].strip().rstrip(".") if text else type(error).__name__


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (config.CONF_DIR / group).glob("*.yaml"))


def one_line_error(error: BaseException) -> str | None:
    """The message for a user mistake, or None for anything else (a bug: show the traceback)."""
    if isinstance(error, MissingConfigException):
        found = re.search(r"Could not find '([\w/]+)/([^']+)'", str(error))
        if found and (config.CONF_DIR / found.group(1)).is_dir():
            group, name = found.groups()
            return f"unknown {group} '{name}'; choose one of: {', '.join(_options(group))}"
        return " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if isinstance(error, ValueError) and str(error).startswith("Unable to configure"):
        cause = f": {_first_line(error.__cause__)}" if error.__cause__ else ""
        return (
            f"Hydra's logging config: {_first_line(error)}{cause}; check the "
            "hydra.job_logging / hydra.hydra_logging overrides"
        )
    if isinstance(error, (HydraException, OmegaConfBaseException)):
        line = _first_line(error)
        if "LexerNoViableAltException" in line or "token recognition error" in line:
            return (
                f"{line}: Hydra reads only ASCII outside quotes; quote the value, e.g. "
                "'logger.experiment=\"café\"'"
            )
        cause = error.__cause__ or error.__context__
        if isinstance(cause, OmegaConfBaseException):
            line = f"{line}: {_first_line(cause)}"
        schema = re.search(r"Key '\w+' not in '(\w+)'", line)
        hint = re.search(r"To append to your config use (\S+)", str(error))
        if schema and dataclasses.is_dataclass(known := getattr(config, schema.group(1), None)):
            # a typed group: `+key=` would be refused too, so name the keys it has instead
            line += f"; it takes: {', '.join(f.name for f in dataclasses.fields(known))}"
        elif hint:
            line += f" (to add a new key use {hint.group(1)})"
        return line
    return None
