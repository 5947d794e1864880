"""The ONC HTI-1 decision-support source attributes of each engine family, as reviewed in
`source_attributes.toml` (45 CFR 170.315(b)(11)(iv)).

The file says what the attributes are today; a version in change control keeps the copy
taken when it was registered (`EngineVersion.source_attributes`), so that editing the file
never rewrites what an older version was said to be.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

ATTRIBUTES_FILE = Path(__file__).with_name("source_attributes.toml")

#: The registry's engine names and the attribute entries that describe them; any other
#: engine is an LLM (predictive).
ENTRY_FOR = {"builtin": "builtin-rules", "builtin-rules": "builtin-rules", "llm": "llm"}


def family(engine: str) -> str:
    """The attributes file's entry for an engine name ("builtin-rules" or "llm")."""
    return ENTRY_FOR.get(engine, "llm")


@lru_cache(maxsize=1)
def engine_attributes() -> Mapping[str, Mapping[str, Any]]:
    """The source attributes per engine family, from the reviewed data file."""
    with ATTRIBUTES_FILE.open("rb") as handle:
        data = tomllib.load(handle)
    engines = data.get("engine")
    if not isinstance(engines, dict) or set(engines) != {"builtin-rules", "llm"}:
        raise ValueError(f"{ATTRIBUTES_FILE}: needs [engine.builtin-rules] and [engine.llm]")
    return engines


def attributes_for(engine: str) -> dict[str, Any]:
    """A copy of the file's attributes for `engine`: what a version registered now keeps."""
    return dict(engine_attributes()[family(engine)])
