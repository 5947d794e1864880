"""Unit (Flask test client): `GET /style.css`, the EHR's SMART style as validated CSS.

The style document is fetched server-side only from an allowed EHR origin (never from
another host a token response names), cached, and only strictly valid values reach the
CSS; the EHR's colours are used only where they keep WCAG AA contrast.
"""

from __future__ import annotations

import re

import pytest
import responses

from smartapp.notes.style import (
    DEFAULT_PALETTE,
    EMPTY_CSS,
    PAIRS,
    SMARTStyleSheets,
    ValidatedStyle,
    build_palette,
    contrast_ratio,
    hex_of,
    palette_failures,
    parse_colour,
    parse_font_family,
    parse_size,
)

from .views_support import launch

STYLE_URL = "http://ehr.test/auth/smart-style.json"  # the allowed issuer's origin

SANDBOX_STYLE = {
    "color_background": "#f5f7fa",
    "color_error": "#b42318",
    "color_highlight": "#0b5cad",
    "color_modal_backdrop": "rgba(15, 23, 42, 0.45)",
    "color_success": "#1a7f37",
    "color_text": "#1f2933",
    "dim_border_radius": "6px",
    "dim_font_size": "14px",
    "dim_spacing_size": "16px",
    "font_family_body": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
    "font_family_heading": "Georgia, serif",
}


@pytest.fixture
def ehr_http():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def declarations(css: str) -> dict[str, str]:
    return dict(re.findall(r"--([a-z-]+): ([^;]+);", css))


def test_sandbox_style_becomes_css_variables(app, client, ehr_http):
    ehr_http.get(STYLE_URL, json=SANDBOX_STYLE)
    launch(app, client, smart_style_url=STYLE_URL)
    response = client.get("/style.css")
    assert response.status_code == 200
    assert response.mimetype == "text/css"
    assert response.headers["Cache-Control"] == "private, no-store"
    values = declarations(response.get_data(as_text=True))
    assert values["bg"] == "#f5f7fa"
    assert values["fg"] == "#1f2933"
    assert values["accent"] == "#0b5cad"
    assert values["error"] == "#b42318"
    assert values["backdrop"] == "rgba(15, 23, 42, 0.45)"
    assert values["font"] == 'system-ui, -apple-system, "Segoe UI", Roboto, sans-serif'
    assert values["font-heading"] == "Georgia, serif"
    assert (values["font-size"], values["radius"], values["space"]) == ("14px", "6px", "16px")


def test_bad_values_are_dropped(app, client, ehr_http):
    hostile = {
        "color_background": "#fff; } body { background: url(http://evil.test/x) } :root {",
        "color_text": "expression(alert(1))",
        "color_highlight": "rgb(300, 0, 0)",
        "color_error": "red",  # named colours are not in the accepted forms
        "color_success": "#12345",
        "color_modal_backdrop": "rgba(0,0,0,0.5); x: y",
        "dim_font_size": "999px",
        "dim_border_radius": "6px !important",
        "dim_spacing_size": "calc(100vw)",
        "font_family_body": "Arial; } * { display: none",
        "font_family_heading": '"Unclosed, serif',
    }
    ehr_http.get(STYLE_URL, json=hostile)
    launch(app, client, smart_style_url=STYLE_URL)
    css = client.get("/style.css").get_data(as_text=True)
    assert declarations(css) == {}
    assert "evil" not in css and "url(" not in css and "expression" not in css
    assert css.count("{") == css.count("}") <= 1


def test_a_foreign_origin_is_never_fetched(app, client, ehr_http):
    for url in (
        "http://evil.test/style.json",
        "http://ehr.test@evil.test/style.json",  # userinfo trick: the host is evil.test
        "http://ehr.test.evil.test/style.json",
        "https://ehr.test/style.json",  # another scheme is another origin
        "http://ehr.test:8080/style.json",  # another port likewise
        "file:///etc/passwd",
    ):
        ehr_http.get(re.compile(r".*"), json=SANDBOX_STYLE)
        launch(app, client, smart_style_url=url)
        response = client.get("/style.css")
        assert response.status_code == 200
        assert response.get_data(as_text=True) == EMPTY_CSS
    assert not ehr_http.calls


def test_the_style_is_fetched_once_and_cached(app, client, ehr_http):
    ehr_http.get(STYLE_URL, json=SANDBOX_STYLE)
    launch(app, client, smart_style_url=STYLE_URL)
    first = client.get("/style.css").get_data(as_text=True)
    second = client.get("/style.css").get_data(as_text=True)
    assert first == second
    assert len(ehr_http.calls) == 1
    call = ehr_http.calls[0]
    assert call.request.url == STYLE_URL


def test_cache_expires_after_its_ttl():
    now = [1000.0]
    with responses.RequestsMock() as mock:
        mock.get(STYLE_URL, json=SANDBOX_STYLE)
        sheets = SMARTStyleSheets(trusted_origins=["http://ehr.test"], clock=lambda: now[0])
        sheets.css_for(STYLE_URL)
        now[0] += 599
        sheets.css_for(STYLE_URL)
        assert len(mock.calls) == 1
        now[0] += 2
        sheets.css_for(STYLE_URL)
        assert len(mock.calls) == 2


def test_a_redirect_is_not_followed(app, client, ehr_http):
    ehr_http.get(STYLE_URL, status=302, headers={"Location": "http://evil.test/style.json"})
    ehr_http.get("http://evil.test/style.json", json=SANDBOX_STYLE)
    launch(app, client, smart_style_url=STYLE_URL)
    assert client.get("/style.css").get_data(as_text=True) == EMPTY_CSS
    assert [c.request.url for c in ehr_http.calls] == [STYLE_URL]


@pytest.mark.parametrize(
    "answer",
    [
        {"status": 500, "json": {"error": "down"}},
        {"body": "not json"},
        {"body": "x" * (70 * 1024)},  # larger than any style document
        {"body": responses.ConnectionError("refused")},
    ],
)
def test_an_unusable_answer_gives_the_sidebar_its_own_look(app, client, ehr_http, answer):
    ehr_http.get(STYLE_URL, **answer)
    launch(app, client, smart_style_url=STYLE_URL)
    response = client.get("/style.css")
    assert response.status_code == 200
    assert response.get_data(as_text=True) == EMPTY_CSS


def test_without_a_launch_or_a_style_the_sheet_is_empty(app, client, ehr_http):
    assert client.get("/style.css").get_data(as_text=True) == EMPTY_CSS
    launch(app, client, smart_style_url=None)
    assert client.get("/style.css").get_data(as_text=True) == EMPTY_CSS
    assert not ehr_http.calls


def test_low_contrast_text_keeps_the_sidebar_colours(app, client, ehr_http):
    ehr_http.get(
        STYLE_URL,
        json={
            "color_background": "#ffffff",
            "color_text": "#aaaaaa",
            "font_family_body": "Verdana, sans-serif",
        },
    )
    launch(app, client, smart_style_url=STYLE_URL)
    values = declarations(client.get("/style.css").get_data(as_text=True))
    assert "fg" not in values and "bg" not in values
    assert values["font"] == "Verdana, sans-serif"  # what is valid is still used


def test_the_sidebar_page_links_the_style_after_app_css(app, client):
    launch(app, client)
    page = client.get("/").get_data(as_text=True)
    app_css = page.index("/static/css/app.css")
    style = page.index('href="/style.css"')
    assert app_css < style


# -- the validators and the palette, directly -------------------------------------------


@pytest.mark.parametrize(
    "value,expected",
    [
        ("#abc", ((0xAA, 0xBB, 0xCC), 1.0)),
        ("#A1B2C3", ((0xA1, 0xB2, 0xC3), 1.0)),
        ("rgb(1, 2, 3)", ((1, 2, 3), 1.0)),
        ("rgb(256, 0, 0)", None),
        ("rgba(1, 2, 3, 0.5)", None),  # transparency only where allowed (the backdrop)
        ("#abcd", None),
        ("blue", None),
        (" #abc ", ((0xAA, 0xBB, 0xCC), 1.0)),
        (None, None),
    ],
)
def test_parse_colour(value, expected):
    assert parse_colour(value) == expected


def test_parse_colour_with_alpha_for_the_backdrop():
    assert parse_colour("rgba(15, 23, 42, 0.45)", allow_alpha=True) == ((15, 23, 42), 0.45)
    assert parse_colour("rgb(1, 2, 3, 0.5)", allow_alpha=True) is None


@pytest.mark.parametrize(
    "value,expected",
    [
        ("Inter, 'Helvetica Neue', sans-serif", 'Inter, "Helvetica Neue", sans-serif'),
        ("-apple-system, system-ui", "-apple-system, system-ui"),
        ("Arial;", None),
        ("'Arial", None),
        ("url(x)", None),
        ("Comic\\000053ans", None),
        ("", None),
        ("a,,b", None),
    ],
)
def test_parse_font_family(value, expected):
    assert parse_font_family(value) == expected


@pytest.mark.parametrize(
    "value,variable,expected",
    [
        ("14px", "font-size", "14px"),
        ("0.875rem", "font-size", "0.875rem"),
        ("1em", "space", "1em"),
        ("40px", "font-size", None),
        ("14pt", "font-size", None),
        ("-2px", "radius", None),
        ("8px", "radius", "8px"),
    ],
)
def test_parse_size(value, variable, expected):
    assert parse_size(value, variable) == expected


def test_contrast_ratio_matches_wcag_reference_values():
    assert contrast_ratio((0, 0, 0), (255, 255, 255)) == pytest.approx(21.0)
    assert contrast_ratio((255, 255, 255), (255, 255, 255)) == pytest.approx(1.0)
    # #767676 on white is the well-known 4.54:1 AA boundary grey.
    assert contrast_ratio((0x76, 0x76, 0x76), (255, 255, 255)) == pytest.approx(4.54, abs=0.01)


def test_the_sidebar_palette_meets_aa_on_every_pair():
    assert palette_failures(DEFAULT_PALETTE) == []
    for text, surface, minimum in PAIRS:
        assert contrast_ratio(DEFAULT_PALETTE[text], DEFAULT_PALETTE[surface]) >= minimum


@pytest.mark.parametrize(
    "colours",
    [
        {"bg": (0x12, 0x12, 0x12), "fg": (0xEE, 0xEE, 0xEE), "accent": (0x8A, 0xB4, 0xF8)},
        {"bg": (0xF5, 0xF7, 0xFA), "fg": (0x1F, 0x29, 0x33), "ok": (0x1A, 0x7F, 0x37)},
        {"bg": (0xFF, 0xFF, 0x00), "fg": (0x00, 0x00, 0xFF)},
        {"accent": (0xFF, 0xFF, 0x00)},  # unreadable on white: ours is kept
        {"bg": (0x00, 0x00, 0x00)},  # a dark background without its text colour
    ],
)
def test_any_ehr_palette_still_meets_aa(colours):
    palette = build_palette(colours)
    assert palette_failures(palette) == []


def test_an_unreadable_highlight_is_not_taken():
    palette = build_palette({"accent": (0xFF, 0xFF, 0x00)})
    assert palette["accent"] == DEFAULT_PALETTE["accent"]


def test_app_css_declares_the_same_palette():
    """app.css's :root colours are the palette the contrast test checked."""
    from smartapp.config import PROJECT_ROOT

    css = (PROJECT_ROOT / "static" / "css" / "app.css").read_text(encoding="utf-8")
    root = css[css.index(":root {") : css.index("}", css.index(":root {"))]
    declared = dict(re.findall(r"--([a-z-]+): (#[0-9a-f]{6});", root))
    assert declared == {name: hex_of(rgb) for name, rgb in DEFAULT_PALETTE.items()}


def test_validated_style_css_is_only_custom_properties():
    css = ValidatedStyle.from_json(SANDBOX_STYLE).css()
    body = css.split("*/", 1)[1]
    lines = [line.strip() for line in body.strip().splitlines()]
    assert lines[0] == ":root {" and lines[-1] == "}"
    assert all(line.startswith("--") and line.endswith(";") for line in lines[1:-1])
