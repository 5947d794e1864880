"""A one-pass check that a resource is certainly valid R4, compiled from the R4B models.

https://hl7.org/fhir/R4/json.html and https://hl7.org/fhir/R4/datatypes.html

`fhir.resources.R4B` builds a pydantic model per element (about 12 per Observation) and
costs ~0.3 ms a resource; a chart of 5,000 Observations spent most of its load there.
This module reads the same models' field definitions once per type (names, cardinality,
primitive types, required elements, choice groups) into plain tables and walks a
resource's JSON in one pass over those tables, checking on the way what
`parsing.hostile_content` and `parsing.unsupported_modifiers` check.

It only ever says "certainly valid" or "not sure": it is stricter than R4B (no type
coercion, no nulls, no empty objects or lists, no JSON number for a string), and any
resource it is not sure about goes to R4B, which has the last word and gives the reason.
So it changes the cost of validation, never its verdict on data R4B would reject, as
`tests/unit/fhir/test_fastcheck.py` checks against R4B on the sandbox population and on
mutations of it.
"""

from __future__ import annotations

import math
import re
import threading
import types as pytypes
import typing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir_core import constraints as fhir_constraints
from fhir_core import types as fhir_types

#: Far deeper than any real resource (each nested extension adds 2 levels), and well
#: inside Python's recursion limit, which pydantic's validation of nested extensions hits
#: at about 125 levels.
MAX_JSON_DEPTH = 64
#: R4 caps a string at 1 MB (https://hl7.org/fhir/R4/datatypes.html#string); counted in
#: characters here. Attachment `data` (base64Binary) has no such cap and is exempt.
MAX_STRING_CHARS = 1024 * 1024
#: R4 decimals need only 18 digits of precision (https://hl7.org/fhir/R4/datatypes.html#decimal);
#: a number this large is not a measurement (a 309-digit "creatinine" is an attack or a bug).
MAX_ABS_NUMBER = 10**18

_SURROGATE = re.compile("[\ud800-\udfff]")
_STRING = re.compile("[ \r\n\t\\S]")
_CODE = re.compile(r"[^\s]+(\s[^\s]+)*")
_ID = re.compile(rf"[A-Za-z0-9\-.]{{1,{fhir_constraints.TYPES_ID_MAX_LENGTH}}}")
_OID = re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+")
_UUID = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_HTTP_URL = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?(/[^\s]*)?")
_LONG_FRACTION = re.compile(r"\.[0-9]{7}")
_INT32 = (-(2**31), 2**31 - 1)


class NotSure(Exception):
    """The fast check cannot vouch for this resource: R4B decides."""


def _text(value: Any) -> str:
    if type(value) is not str or not value:
        raise NotSure
    if len(value) > MAX_STRING_CHARS or (not value.isascii() and _SURROGATE.search(value)):
        raise NotSure
    return value


def _check_string(value: Any) -> None:
    # R4B's pattern is unanchored; anchoring it at the start is stricter, never looser.
    if not _STRING.match(_text(value)):
        raise NotSure


def _pattern(pattern: re.Pattern[str]) -> Callable[[Any], None]:
    # ASCII only: where Python's and pydantic's regex engines could differ on whitespace.
    def check(value: Any) -> None:
        text = _text(value)
        if not text.isascii() or not pattern.fullmatch(text):
            raise NotSure

    return check


def _check_base64(value: Any) -> None:
    # Attachment data is exempt from the string cap (parsing.hostile_content). R4B decodes
    # it (non-strictly); canonical base64 always decodes.
    if type(value) is not str or len(value) % 4 or not _BASE64.fullmatch(value):
        raise NotSure


def _check_boolean(value: Any) -> None:
    if type(value) is not bool:
        raise NotSure


def _integer(low: int, high: int) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if type(value) is not int or not low <= value <= high:
            raise NotSure

    return check


def _check_decimal(value: Any) -> None:
    kind = type(value)
    if kind is int:
        if abs(value) >= MAX_ABS_NUMBER:
            raise NotSure
    elif kind is float:
        if not math.isfinite(value) or abs(value) >= MAX_ABS_NUMBER:
            raise NotSure
    else:
        raise NotSure


def _check_date(value: Any) -> None:
    text = _text(value)
    if not fhir_types.Date.pattern.fullmatch(text):
        raise NotSure
    if len(text) == 10:
        try:
            date.fromisoformat(text)
        except ValueError:
            raise NotSure from None


def _check_datetime(value: Any, *, instant: bool = False) -> None:
    text = _text(value)
    pattern = fhir_types.Instant.pattern if instant else fhir_types.DateTime.pattern
    if not pattern.fullmatch(text):
        raise NotSure
    if len(text) < 10:
        return  # a year or a year and month: the pattern is the whole rule
    if len(text) == 10:
        _check_date(text)
        return
    if ":60" in text or _LONG_FRACTION.search(text):
        raise NotSure  # a leap second (R4B's special case), or beyond microseconds
    try:
        datetime.fromisoformat(text)  # a real day and time (the pattern requires the zone)
    except ValueError:
        raise NotSure from None


def _check_instant(value: Any) -> None:
    _check_datetime(value, instant=True)


def _check_time(value: Any) -> None:
    text = _text(value)
    if not fhir_types.Time.pattern.fullmatch(text) or ":60" in text or _LONG_FRACTION.search(text):
        raise NotSure


def _check_url(value: Any) -> None:
    if not _HTTP_URL.fullmatch(_text(value)):
        raise NotSure


_PRIMITIVES: dict[str, Callable[[Any], None]] = {
    "string": _check_string,
    "url": _check_url,
    "code": _pattern(_CODE),
    "id": _pattern(_ID),
    "oid": _pattern(_OID),
    "uuid": _pattern(_UUID),
    "base64Binary": _check_base64,
    "boolean": _check_boolean,
    "integer": _integer(*_INT32),
    "unsignedInt": _integer(0, _INT32[1]),
    "positiveInt": _integer(1, _INT32[1]),
    "decimal": _check_decimal,
    "date": _check_date,
    "dateTime": _check_datetime,
    "instant": _check_instant,
    "time": _check_time,
}


# -- the tables ----------------------------------------------------------------------------

#: What a key holds: text (any non-empty string), another primitive (its check), an
#: element (its table; the `_field` sibling of a primitive is one), any resource, or
#: `fhir_comments`.
_TEXT, _PRIMITIVE, _ELEMENT, _RESOURCE, _COMMENTS, _STR = range(6)
_TEXT_TYPES = frozenset({"markdown", "uri", "canonical", "xhtml"})

#: (kind, a list?, the check or the table, the choice group's index or -1)
_Field = tuple[int, bool, Any, int]


@dataclass(slots=True)
class _Table:
    """One model's fields by JSON key, its required keys and its choice groups (value[x])."""

    name: str
    fields: dict[str, _Field]
    #: Complex elements that must be present.
    required: tuple[str, ...] = ()
    #: Primitives that must be present, as the value or its `_field` sibling.
    required_primitive: tuple[tuple[str, str], ...] = ()
    #: The choice groups one of whose keys must be present, as bits.
    required_choices: int = 0
    is_resource: bool = False


_tables: dict[str, _Table] = {}
_tables_lock = threading.RLock()


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the inner type, whether it is a list) of `Optional[List[X]]`, `X | None`, …"""
    many = False
    while True:
        origin = typing.get_origin(annotation)
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if origin in (typing.Union, pytypes.UnionType):
            if len(args) != 1:
                return None, many  # fhir_comments: str | list[str]
            annotation = args[0]
        elif origin is list:
            many = True
            annotation = args[0]
        else:
            return annotation, many


def _primitive_type(inner: Any) -> str | None:
    if inner is bool:
        return "boolean"
    # `Annotated[str, Id()]`, `Annotated[bytes, EncodedBytes(…), Base64Binary()]`: the
    # metadata names the FHIR type.
    for item in getattr(inner, "__metadata__", ()):
        name = getattr(item, "__visit_name__", None)
        if isinstance(name, str):
            return name
    return None


def _build(model: Any) -> _Table:
    table = _Table(name=model.__name__, fields={}, is_resource=model.has_resource_base())
    _tables[model.__name__] = table  # before the fields: elements nest recursively
    required: list[str] = []
    required_primitive: list[tuple[str, str]] = []
    groups: dict[str, int] = {}
    by_name = {name: field.alias or name for name, field in model.model_fields.items()}
    for name, info in model.model_fields.items():
        key = info.alias or name
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if name == "fhir_comments":
            table.fields[key] = (_COMMENTS, False, None, -1)
            continue
        inner, many = _unwrap(info.annotation)
        if name.endswith("__ext"):
            element = _table_for(get_fhir_model_class("FHIRPrimitiveExtension"))
            table.fields[key] = (_ELEMENT, many, element, -1)
            continue
        group_name = extra.get("one_of_many")
        group = groups.setdefault(group_name, len(groups)) if isinstance(group_name, str) else -1
        if group >= 0 and extra.get("one_of_many_required") is True:
            table.required_choices |= 1 << group
        primitive = _primitive_type(inner)
        if primitive in _TEXT_TYPES:
            table.fields[key] = (_TEXT, many, None, group)
        elif primitive == "string":
            table.fields[key] = (_STR, many, None, group)  # checked inline
        elif primitive is not None and primitive in _PRIMITIVES:
            table.fields[key] = (_PRIMITIVE, many, _PRIMITIVES[primitive], group)
        elif isinstance(inner, type) and issubclass(inner, fhir_types.FhirBase):
            target = inner.get_model_klass()
            if target.__name__ in ("Resource", "DomainResource"):
                table.fields[key] = (_RESOURCE, many, None, group)
            else:
                table.fields[key] = (_ELEMENT, many, _table_for(target), group)
        else:
            # A type this module does not know how to check: such a key always defers.
            continue
        if extra.get("element_required"):
            required_primitive.append((key, by_name.get(f"{name}__ext", f"_{key}")))
        elif info.is_required():
            required.append(key)
    table.required = tuple(required)
    table.required_primitive = tuple(required_primitive)
    return table


def _table_for(model: Any) -> _Table:
    with _tables_lock:
        table = _tables.get(model.__name__)
        return table if table is not None else _build(model)


def _resource_table(resource_type: Any) -> _Table:
    if type(resource_type) is not str:
        raise NotSure
    table = _tables.get(resource_type)
    if table is not None and table.is_resource:
        return table
    try:
        model = get_fhir_model_class(resource_type)
    except (KeyError, ValueError):
        raise NotSure from None
    table = _table_for(model)
    if not table.is_resource:
        raise NotSure
    return table


# -- the walk ------------------------------------------------------------------------------


def _walk(
    data: Any, table: _Table, depth: int, modifiers: list[str], *, resource: bool = False
) -> None:
    # The hot loop of a chart load (about 12 calls a resource): each kind of key is
    # handled in its own branch, a list and a single value apart, strings checked inline.
    if type(data) is not dict or not data or depth >= MAX_JSON_DEPTH:
        raise NotSure
    fields = table.fields
    chosen = 0
    for key, value in data.items():
        spec = fields.get(key)
        if spec is None:
            if key == "resourceType" and resource:
                continue
            raise NotSure
        kind, many, target, group = spec
        if group >= 0:
            if chosen >> group & 1:
                raise NotSure  # two of value[x]
            chosen |= 1 << group
        if many:
            if type(value) is not list or not value:
                raise NotSure
            if kind == _ELEMENT:
                for item in value:
                    _walk(item, target, depth + 2, modifiers)
                if key == "modifierExtension":
                    for modifier in value:
                        url = modifier.get("url")
                        modifiers.append(url if isinstance(url, str) else "(no url)")
            elif kind == _PRIMITIVE:
                for item in value:
                    target(item)
            elif kind == _TEXT or kind == _STR:
                for item in value:
                    if (
                        type(item) is not str
                        or not item
                        or len(item) > MAX_STRING_CHARS
                        or (not item.isascii() and _SURROGATE.search(item))
                        or (kind == _STR and not _STRING.match(item))
                    ):
                        raise NotSure
            elif kind == _RESOURCE:
                for item in value:
                    if type(item) is not dict:
                        raise NotSure
                    child = _resource_table(item.get("resourceType"))
                    _walk(item, child, depth + 2, modifiers, resource=True)
            else:  # fhir_comments as a list: R4B decides
                raise NotSure
        elif type(value) is list or value is None:
            raise NotSure
        elif kind == _STR or kind == _TEXT:
            if (
                type(value) is not str
                or not value
                or len(value) > MAX_STRING_CHARS
                or (not value.isascii() and _SURROGATE.search(value))
                or (kind == _STR and not _STRING.match(value))
            ):
                raise NotSure
        elif kind == _PRIMITIVE:
            target(value)
        elif kind == _ELEMENT:
            _walk(value, target, depth + 2, modifiers)
            if key == "modifierExtension":
                raise NotSure  # not a list: R4B decides
        elif kind == _RESOURCE:
            if type(value) is not dict:
                raise NotSure
            child = _resource_table(value.get("resourceType"))
            _walk(value, child, depth + 2, modifiers, resource=True)
        else:  # fhir_comments: a string here
            _text(value)
    for key in table.required:
        if key not in data:
            raise NotSure
    for key, sibling in table.required_primitive:
        if key not in data and sibling not in data:
            raise NotSure
    if table.required_choices & ~chosen:
        raise NotSure


def certainly_valid(resource: Any) -> list[str] | None:
    """The URLs of the resource's modifier extensions (anywhere in it) when the resource is
    certainly valid R4 and not hostile (`parsing.hostile_content`); None when not sure."""
    if type(resource) is not dict:
        return None
    try:
        table = _resource_table(resource.get("resourceType"))
        modifiers: list[str] = []
        _walk(resource, table, 0, modifiers, resource=True)
    except NotSure:
        return None
    except RecursionError:
        return None
    return modifiers


def warm_up(resource_types: typing.Iterable[str]) -> None:
    """Build the tables now (a few ms a type), not during the first chart load."""
    for resource_type in resource_types:
        _resource_table(resource_type)
