"""The EHR's look in the sidebar: `smart_style_url` fetched server-side, validated, served as CSS.

https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html#styling

The launch's token response may name a style document (colours, fonts, sizes). The
browser cannot fetch it (CSP `connect-src 'self'`), so the server does, but only from an
origin the app already trusts (an allowed issuer's or an allowed frame ancestor's): a URL
in a token response is never fetched blindly. Only values that match strict patterns
become CSS custom properties, and the EHR's colours are used only where every text and
control keeps WCAG 2.x AA contrast (https://www.w3.org/TR/WCAG21/#contrast-minimum);
otherwise the sidebar keeps its own.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from smartapp.httplimits import limited_session

log = logging.getLogger(__name__)

RGB = tuple[int, int, int]

#: The sidebar's own palette: the colours it is designed with (app.css `:root` holds the
#: same values; a unit test keeps the two in step).
PRIMARIES: dict[str, RGB] = {
    "bg": (0xFF, 0xFF, 0xFF),
    "fg": (0x1B, 0x1F, 0x24),
    "accent": (0x0B, 0x5C, 0xAD),
    "ok": (0x1D, 0x6B, 0x32),
    "warn": (0x8A, 0x4B, 0x00),
    "error": (0xA4, 0x16, 0x1A),
    "ai": (0x5B, 0x2A, 0x86),
    "focus": (0xB3, 0x47, 0x00),
}

#: Text and background pairs the sidebar draws, with the contrast each needs: 4.5 for
#: text (WCAG 1.4.3), 3 for control boundaries and the focus ring (1.4.11).
TEXT_COLOURS = ("fg", "muted", "accent", "ok", "warn", "error", "ai")
SURFACES = ("bg", "card")
TINTED = {
    "ok": "ok-bg",
    "warn": "warn-bg",
    "error": "error-bg",
    "ai": "ai-bg",
    "accent": "accent-bg",
}
PAIRS: tuple[tuple[str, str, float], ...] = (
    *((text, surface, 4.5) for text in TEXT_COLOURS for surface in SURFACES),
    *((text, tint, 4.5) for text, tint in TINTED.items()),
    *(("fg", tint, 4.5) for tint in TINTED.values()),
    ("accent-fg", "accent", 4.5),
    *(("control", surface, 3.0) for surface in SURFACES),
    *(("focus", surface, 3.0) for surface in SURFACES),
)

#: What the SMART style keys set in the sidebar.
COLOUR_KEYS = {
    "color_background": "bg",
    "color_text": "fg",
    "color_highlight": "accent",
    "color_error": "error",
    "color_success": "ok",
}
SIZE_KEYS = {
    "dim_font_size": "font-size",
    "dim_border_radius": "radius",
    "dim_spacing_size": "space",
}
FONT_KEYS = {"font_family_body": "font", "font_family_heading": "font-heading"}
#: Sizes outside these bounds would break a 320 px sidebar: (min, max) per unit.
SIZE_BOUNDS: dict[str, dict[str, tuple[float, float]]] = {
    "font-size": {"px": (11, 20), "rem": (0.7, 1.25), "em": (0.7, 1.25)},
    "radius": {"px": (0, 16), "rem": (0, 1), "em": (0, 1)},
    "space": {"px": (4, 24), "rem": (0.25, 1.5), "em": (0.25, 1.5)},
}

_HEX = re.compile(r"#([0-9a-fA-F]{3}|[0-9a-fA-F]{6})")
_RGB_FN = re.compile(
    r"rgba?\(\s*(\d{1,3})\s*,\s*(\d{1,3})\s*,\s*(\d{1,3})\s*(?:,\s*(0|1|0?\.\d{1,3}|1\.0{1,3})\s*)?\)"
)
_SIZE = re.compile(r"(\d{1,3}(?:\.\d{1,3})?)(px|rem|em)")
_FONT_NAME = re.compile(r"[A-Za-z0-9\-][A-Za-z0-9 \-]{0,60}")
MAX_STYLE_BYTES = 64 * 1024


# -- colours -------------------------------------------------------------------------------


def parse_colour(value: Any, *, allow_alpha: bool = False) -> tuple[RGB, float] | None:
    """`#rgb`, `#rrggbb`, `rgb(r, g, b)` (and `rgba(…, a)` when allowed) → ((r, g, b), alpha)."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if match := _HEX.fullmatch(value):
        digits = match.group(1)
        if len(digits) == 3:
            digits = "".join(c * 2 for c in digits)
        return (int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16)), 1.0
    if match := _RGB_FN.fullmatch(value):
        channels = tuple(int(match.group(i)) for i in (1, 2, 3))
        if any(c > 255 for c in channels):
            return None
        alpha = float(match.group(4)) if match.group(4) is not None else 1.0
        if value.startswith("rgba") != (match.group(4) is not None):
            return None
        if alpha < 1.0 and not allow_alpha:
            return None
        return (channels[0], channels[1], channels[2]), alpha
    return None


def hex_of(rgb: RGB) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _linear(channel: int) -> float:
    c = channel / 255
    return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4


def relative_luminance(rgb: RGB) -> float:
    """WCAG 2.x relative luminance (https://www.w3.org/TR/WCAG21/#dfn-relative-luminance)."""
    r, g, b = (_linear(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(a: RGB, b: RGB) -> float:
    """WCAG contrast ratio, 1 to 21 (https://www.w3.org/TR/WCAG21/#dfn-contrast-ratio)."""
    la, lb = sorted((relative_luminance(a), relative_luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def mix(a: RGB, b: RGB, amount: float) -> RGB:
    """`amount` of b over a, in sRGB (what CSS color-mix(in srgb) does)."""
    return (
        round(a[0] + (b[0] - a[0]) * amount),
        round(a[1] + (b[1] - a[1]) * amount),
        round(a[2] + (b[2] - a[2]) * amount),
    )


def _readable(colour: RGB, fg: RGB, backgrounds: Iterable[RGB], minimum: float) -> RGB:
    """`colour` moved towards the text colour just enough to reach `minimum` on each background."""
    backgrounds = tuple(backgrounds)
    for step in range(11):
        candidate = mix(colour, fg, step / 10)
        if all(contrast_ratio(candidate, bg) >= minimum for bg in backgrounds):
            return candidate
    return colour


def derive_palette(primaries: Mapping[str, RGB]) -> dict[str, RGB]:
    """Every colour variable of the sidebar from its primaries (bg, fg, accent, ok, ...).

    Surfaces and tints are mixed from the background; the muted text, control borders and
    the accent colours are nudged towards the text colour where they would fall short.
    """
    bg, fg = primaries["bg"], primaries["fg"]
    card = mix(bg, fg, 0.035)
    palette: dict[str, RGB] = {"bg": bg, "fg": fg, "card": card, "line": mix(bg, fg, 0.16)}
    palette["muted"] = _readable(mix(fg, bg, 0.3), fg, (bg, card), 4.5)
    palette["control"] = _readable(mix(fg, bg, 0.5), fg, (bg, card), 3.0)
    palette["focus"] = _readable(primaries["focus"], fg, (bg, card), 3.0)
    for name in ("accent", "ok", "warn", "error", "ai"):
        tint = mix(bg, primaries[name], 0.09)
        palette[f"{name}-bg"] = tint
        palette[name] = _readable(primaries[name], fg, (bg, card, tint), 4.5)
    accent = palette["accent"]
    white, black = (255, 255, 255), (17, 17, 17)
    palette["accent-fg"] = (
        white if contrast_ratio(white, accent) >= contrast_ratio(black, accent) else black
    )
    return palette


def palette_failures(palette: Mapping[str, RGB]) -> list[str]:
    """The pairs below their minimum contrast, as `text/background ratio<minimum` (none: AA)."""
    failures = []
    for text, surface, minimum in PAIRS:
        ratio = contrast_ratio(palette[text], palette[surface])
        if ratio < minimum:
            failures.append(f"{text}/{surface} {ratio:.2f}<{minimum}")
    return failures


DEFAULT_PALETTE = derive_palette(PRIMARIES)


def build_palette(ehr_colours: Mapping[str, RGB]) -> dict[str, RGB]:
    """The sidebar's palette with as many of the EHR's colours as keep every pair at AA.

    The text and background go together (one without the other is not the EHR's look);
    then the highlight, error and success colours are each taken if they still pass.
    """
    primaries = dict(PRIMARIES)
    base = {k: ehr_colours[k] for k in ("bg", "fg") if k in ehr_colours}
    if base:
        candidate = {**primaries, **base}
        if not palette_failures(derive_palette(candidate)):
            primaries = candidate
    for key in ("accent", "error", "ok"):
        if key in ehr_colours:
            candidate = {**primaries, key: ehr_colours[key]}
            palette = derive_palette(candidate)
            # Taken only as given: a nudged EHR colour would be neither theirs nor ours.
            if not palette_failures(palette) and palette[key] == ehr_colours[key]:
                primaries = candidate
    palette = derive_palette(primaries)
    return palette if not palette_failures(palette) else dict(DEFAULT_PALETTE)


# -- fonts and sizes -------------------------------------------------------------------


def parse_font_family(value: Any) -> str | None:
    """A font-family list of plain or quoted names (letters, digits, spaces, hyphens)."""
    if not isinstance(value, str) or len(value) > 300:
        return None
    families = []
    for part in value.split(","):
        name = part.strip()
        if len(name) >= 2 and name[0] == name[-1] and name[0] in "'\"":
            inner = name[1:-1].strip()
            if not _FONT_NAME.fullmatch(inner):
                return None
            families.append(f'"{inner}"')
        elif _FONT_NAME.fullmatch(name):
            families.append(name)
        else:
            return None
    return ", ".join(families) if families else None


def parse_size(value: Any, variable: str) -> str | None:
    """A length in px, rem or em within the bounds the sidebar can take for `variable`."""
    if not isinstance(value, str):
        return None
    match = _SIZE.fullmatch(value.strip())
    if not match:
        return None
    number, unit = float(match.group(1)), match.group(2)
    low, high = SIZE_BOUNDS[variable][unit]
    if not low <= number <= high:
        return None
    return f"{number:g}{unit}"


# -- the style sheet -----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ValidatedStyle:
    """What survived validation: CSS custom property name (without `--`) → value."""

    colours: Mapping[str, RGB]
    backdrop: str | None
    other: Mapping[str, str]

    @classmethod
    def from_json(cls, data: Any) -> ValidatedStyle:
        data = data if isinstance(data, Mapping) else {}
        colours: dict[str, RGB] = {}
        for key, variable in COLOUR_KEYS.items():
            parsed = parse_colour(data.get(key))
            if parsed is not None:
                colours[variable] = parsed[0]
        backdrop = None
        parsed_backdrop = parse_colour(data.get("color_modal_backdrop"), allow_alpha=True)
        if parsed_backdrop is not None:
            (r, g, b), alpha = parsed_backdrop
            backdrop = f"rgba({r}, {g}, {b}, {alpha:g})"
        other: dict[str, str] = {}
        for key, variable in SIZE_KEYS.items():
            if (size := parse_size(data.get(key), variable)) is not None:
                other[variable] = size
        for key, variable in FONT_KEYS.items():
            if (family := parse_font_family(data.get(key))) is not None:
                other[variable] = family
        return cls(colours=colours, backdrop=backdrop, other=other)

    def css(self) -> str:
        lines = [
            "/* The EHR's SMART style (smart_style_url), validated: smartapp/notes/style.py */"
        ]
        declarations: list[str] = []
        palette = build_palette(self.colours)
        if palette != DEFAULT_PALETTE:
            declarations += [f"  --{name}: {hex_of(rgb)};" for name, rgb in palette.items()]
        if self.backdrop:
            declarations.append(f"  --backdrop: {self.backdrop};")
        declarations += [f"  --{name}: {value};" for name, value in self.other.items()]
        if declarations:
            lines += [":root {", *declarations, "}"]
        return "\n".join(lines) + "\n"


EMPTY_CSS = "/* No SMART style for this launch: the sidebar's own look. */\n"


def _origin(url: str) -> str | None:
    """scheme://host[:port] with the default port dropped; None for anything odd."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if parts.username is not None or parts.password is not None:
        return None
    default = 443 if parts.scheme == "https" else 80
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


class SMARTStyleSheets:
    """Fetches a launch's style document from a trusted origin, caches it, renders CSS."""

    def __init__(
        self,
        *,
        trusted_origins: Iterable[str],
        session: requests.Session | None = None,
        timeout: float = 3.0,
        ttl: float = 600.0,
        failure_ttl: float = 60.0,
        max_entries: int = 128,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._trusted = {o for o in (_origin(u) for u in trusted_origins) if o}
        # A stylesheet is a few kilobytes; a slow or huge one must not hold the sidebar.
        self._http = session or limited_session(deadline=10.0, max_bytes=2 * MAX_STYLE_BYTES)
        self._timeout = timeout
        self._ttl = ttl
        self._failure_ttl = failure_ttl
        self._max_entries = max_entries
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    def is_trusted(self, url: str) -> bool:
        origin = _origin(url)
        return origin is not None and origin in self._trusted

    def css_for(self, url: str | None) -> str:
        """The CSS for a launch's `smart_style_url` (the sidebar's own look when there is none)."""
        if not url or len(url) > 2048:
            return EMPTY_CSS
        if not self.is_trusted(url):
            # Never fetched: a token response must not make the server call arbitrary hosts.
            log.info("smart_style_url ignored: its origin is not an allowed EHR origin")
            return EMPTY_CSS
        now = self._clock()
        with self._lock:
            cached = self._cache.get(url)
            if cached is not None and cached[0] > now:
                return cached[1]
        css, ok = self._load(url)
        with self._lock:
            self._cache[url] = (now + (self._ttl if ok else self._failure_ttl), css)
            self._cache.move_to_end(url)
            while len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        return css

    def _load(self, url: str) -> tuple[str, bool]:
        try:
            # No redirects: a redirect could lead anywhere, and only this origin is trusted.
            with self._http.get(
                url,
                timeout=self._timeout,
                allow_redirects=False,
                stream=True,
                headers={"Accept": "application/json"},
            ) as response:
                if response.status_code != 200:
                    log.info("smart_style_url answered %s", response.status_code)
                    return EMPTY_CSS, False
                body = b""
                for chunk in response.iter_content(16384):
                    body += chunk
                    if len(body) > MAX_STYLE_BYTES:
                        break
        except requests.RequestException as exc:
            log.info("smart_style_url could not be fetched (%s)", type(exc).__name__)
            return EMPTY_CSS, False
        if len(body) > MAX_STYLE_BYTES:
            log.info("smart_style_url is larger than %d bytes: ignored", MAX_STYLE_BYTES)
            return EMPTY_CSS, False
        try:
            data = json.loads(body)
        except ValueError:
            log.info("smart_style_url is not JSON: ignored")
            return EMPTY_CSS, False
        return ValidatedStyle.from_json(data).css(), True
