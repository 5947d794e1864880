"""UCUM units through a real UCUM parser (ucumvert, on pint).

ucumvert (https://github.com/dalito/ucumvert) parses UCUM case-sensitive codes into
pint units, so `mg/mg`, `ug/dL`, `mL/min/{1.73_m2}`, `10*3/uL` and `[lb_av]` are read
by the UCUM grammar rather than a hand list. Two units are the same when they parse to
the same dimension with a conversion factor of 1; values convert between commensurable
units (`[lb_av]` → `kg`, `umol/L` → `mg/dL` needs a molar mass and is not done here).
"""

from __future__ import annotations

import math
import re
import threading
from functools import lru_cache
from typing import Any

#: What a UCUM code written after a number looks like (used only to find candidates;
#: the parser decides). A candidate needs one of / [ { * so that words are never units.
UCUM_TOKEN = re.compile(
    r"\s?(?P<unit>[A-Za-z%µ\[\]{}_/*.0-9^'-]*[/\[{*][A-Za-z%µ\[\]{}_/*.0-9^'-]*)"
)


#: ucumvert's parser and pint's registry are not safe across threads: concurrent first
#: requests (`make load`) made `from_ucum` fail, and `parse` cached the failure as "not
#: UCUM" for good. Only cache misses take the lock.
_PARSER_LOCK = threading.Lock()


@lru_cache(maxsize=1)
def _registry() -> Any:
    from ucumvert import PintUcumRegistry  # slow to build: once per process

    return PintUcumRegistry()


def warm_up() -> None:
    """Build the UCUM registry now (about 2 s of CPU), not in the first request that reads
    a unit: `smartapp serve` calls it before listening. In `make load`'s slow-LLM level (no
    warm-up sessions) each process's first drafting request built it while the others
    waited on the parser's lock: first suggestions p95 12.9 s, 1.9 s of CPU in that one
    request."""
    parse("mg/dL")


@lru_cache(maxsize=4096)
def parse(code: str) -> Any | None:
    """The pint quantity for a UCUM code (1 × unit), or None if it is not UCUM."""
    code = code.strip().replace("µ", "u")
    if not code or len(code) > 40:
        return None
    try:
        with _PARSER_LOCK:
            return _registry().from_ucum(code)
    except Exception:  # noqa: BLE001 - the parser raises several kinds for non-UCUM text
        return None


def same_unit(a: str | None, b: str | None) -> bool:
    """True when both are UCUM codes for the same unit (`ug/dL` = `10.ug/L` … = factor 1)."""
    if not a or not b:
        return False
    qa, qb = parse(a), parse(b)
    if qa is None or qb is None:
        return False
    try:
        if qa.dimensionality != qb.dimensionality:
            return False
        factor = float((qa / qb).to_base_units().magnitude)
    except Exception:  # noqa: BLE001
        return False
    return math.isfinite(factor) and math.isclose(factor, 1.0, rel_tol=1e-9)


def convert(value: float, source: str, target: str) -> float | None:
    """`value` in `source` expressed in `target`, or None when they are not commensurable."""
    qa, qb = parse(source), parse(target)
    if qa is None or qb is None:
        return None
    try:
        result = float((qa * value).to(qb.units).magnitude / qb.magnitude)
    except Exception:  # noqa: BLE001
        return None
    return result if math.isfinite(result) else None


def dimensionless(code: str | None) -> bool:
    """True for UCUM ratios (`%`, `mmol/mol`, `mg/mg`): their factor says nothing about
    which quantities they compare, so they are never converted into one another."""
    if not code:
        return False
    parsed = parse(code)
    if parsed is None:
        return False
    try:
        return bool(parsed.dimensionless)
    except Exception:  # noqa: BLE001
        return False
