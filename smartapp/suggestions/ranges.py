"""Default reference ranges: used when a result carries neither its own range nor a flag.

The table is data (`smartapp/clinical/data/reference_ranges.toml`, each range cited); a
site adds or overrides ranges with a file of the same shape in its own folder. Units
compare through UCUM (`smartapp.suggestions.units`): a range in other units says nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from smartapp.clinical import KnowledgeError, Source, entries, source, value_sets
from smartapp.suggestions import units
from smartapp.suggestions.facts import Quantity, RangeCheck, format_number


@dataclass(frozen=True, kw_only=True)
class DefaultRange:
    valueset: str
    unit: str
    sex: str | None
    low: Decimal | None
    high: Decimal | None
    cite: Source

    def text(self) -> str:
        if self.low is not None and self.high is not None:
            shown = f"{format_number(self.low)}-{format_number(self.high)}"
        elif self.low is not None:
            shown = f"at least {format_number(self.low)}"
        else:
            shown = f"up to {format_number(self.high or Decimal(0))}"
        return f"{shown}{self.unit}" if self.unit == "%" else f"{shown} {self.unit}"


def _number(value: Any, where: str) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise KnowledgeError(f"{where}: low/high must be numbers")
    return Decimal(str(value))


@lru_cache(maxsize=8)
def default_ranges(extra_dirs: tuple[Path, ...] = ()) -> tuple[DefaultRange, ...]:
    known = value_sets(extra_dirs)
    found: list[DefaultRange] = []
    for path, item in entries("reference_ranges", "range", extra_dirs):
        where = f"{path.name} range {item.get('valueset')!r}"
        vs_id, unit = item.get("valueset"), item.get("unit")
        if vs_id not in known:
            raise KnowledgeError(f"{where}: no value set of that id")
        if not isinstance(unit, str) or units.parse(unit) is None:
            raise KnowledgeError(f"{where}: unit must be a UCUM code")
        low, high = _number(item.get("low"), where), _number(item.get("high"), where)
        if low is None and high is None:
            raise KnowledgeError(f"{where}: needs low or high")
        sex = item.get("sex")
        if sex not in (None, "male", "female"):
            raise KnowledgeError(f"{where}: sex must be male or female")
        found.append(
            DefaultRange(
                valueset=str(vs_id),
                unit=unit,
                sex=sex,
                low=low,
                high=high,
                cite=source(item.get("cite"), where=where),
            )  # fmt: skip
        )
    return tuple(found)


def default_range_check(
    obs: Mapping[str, Any],
    value: Quantity,
    *,
    sex: str | None,
    extra_dirs: Iterable[Path] = (),
) -> tuple[RangeCheck, DefaultRange] | None:
    """The value against the default table's range for its test, sex and unit, if outside."""
    number = value.number
    if number is None or not value.unit:
        return None
    dirs = tuple(extra_dirs)
    known = value_sets(dirs)
    for default in default_ranges(dirs):
        if default.sex is not None and default.sex != sex:
            continue
        if not known[default.valueset].matches(obs.get("code")):
            continue
        if (
            value.unit != default.unit
            and not units.same_unit(value.unit, default.unit)
            and not units.same_unit(value.code, default.unit)
        ):
            continue
        if default.low is not None and number < default.low:
            return RangeCheck(direction="below", range_text=default.text()), default
        if default.high is not None and number > default.high:
            return RangeCheck(direction="above", range_text=default.text()), default
        return None
    return None
