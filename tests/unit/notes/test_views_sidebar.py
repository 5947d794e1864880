"""Unit (Flask test client): the sidebar page and its static code keep the CSP's promises.

CSP is `script-src 'self'` and `style-src 'self' <EHR origins>`: no inline script, no
inline style attribute. Chart data is untrusted: the sidebar's JavaScript never parses
text as HTML.
"""

from __future__ import annotations

import re

import pytest

from smartapp.config import PROJECT_ROOT

from .views_support import fixture_snapshot, launch, use_chart

JS = sorted((PROJECT_ROOT / "static" / "js").glob("*.js"))


def test_sidebar_page_has_no_inline_script_or_style(app, client):
    use_chart(app, fixture_snapshot())
    launch(app, client)
    response = client.get("/")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert " style=" not in page and "<style" not in page
    for tag in re.findall(r"<script\b[^>]*>", page):
        assert 'src="/static/' in tag, tag
    assert not re.search(r"<script\b[^>]*>\s*[^<\s]", page), "no inline script body"
    assert re.search(r"\son[a-z]+=", page) is None, "no inline event handlers"
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]


@pytest.mark.parametrize("path", JS, ids=lambda p: p.name)
def test_javascript_never_writes_html(path):
    source = path.read_text(encoding="utf-8")
    for forbidden in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        '.setAttribute("style"',
        "setAttribute('style'",
    ):
        assert forbidden not in source, f"{path.name} uses {forbidden}"


@pytest.mark.parametrize("path", JS, ids=lambda p: p.name)
def test_javascript_imports_resolve(path):
    for name in re.findall(r'from "\./([a-z]+\.js)"', path.read_text(encoding="utf-8")):
        assert (path.parent / name).exists(), f"{path.name} imports a missing {name}"


def test_static_modules_are_served_as_javascript(client):
    for path in JS:
        response = client.get(f"/static/js/{path.name}")
        assert response.status_code == 200
        assert response.mimetype in ("text/javascript", "application/javascript")
        response.close()


def test_context_keeps_its_contract_shape(app, client):
    use_chart(app, fixture_snapshot())
    launch(app, client, need_patient_banner=True)
    context = client.get("/api/context").get_json()
    assert {"patient", "encounter", "fhirUser", "needPatientBanner", "csrfToken"} <= set(context)
    assert context["needPatientBanner"] is True
    assert context["canWriteNotes"] is True
    assert set(context["patient"]) == {"id", "name", "birthDate", "gender"}
