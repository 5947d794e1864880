"""Unit (app + SQLite): rollout rules from the site file and the dashboard, listed together
with their source, and one decision from them (`smartapp.policy`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from textwrap import dedent

from smartapp.governance.state import GovernanceState
from smartapp.policy import Policy
from smartapp.siteconfig import parse_site_config
from tests.unit.admin.conftest import ADMIN_1, ISS, TOKEN, bearer, make_admin_app

SITE_FILE = dedent(
    f"""
    [rollout.care_gaps]
    percent = 30

    [sites."{ISS}".rollout.allergies]
    enabled = false
    """
)
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def app_with_site_file(tmp_path, identity):
    path = tmp_path / "site.toml"
    path.write_text(SITE_FILE, encoding="utf-8")
    return make_admin_app(tmp_path, identity, SMARTAPP_ADMIN_TOKEN=TOKEN, SMARTAPP_CONFIG=str(path))


def test_file_and_dashboard_rules_are_listed_together_with_their_source(tmp_path, identity):
    app = app_with_site_file(tmp_path, identity)
    client = app.test_client()
    added = client.post(
        "/admin/api/rollout",
        json={"site": ISS, "kind": "care_gaps", "enabled": True, "percentage": 50},
        headers=bearer(),
    )
    assert added.status_code == 201
    listing = client.get("/admin/api/policy/rollout", headers=bearer()).get_json()
    assert [
        (r["source"], r["site"], r["kind"], r["enabled"], r["percentage"]) for r in listing["rules"]
    ] == [
        ("file", "*", "care_gaps", True, 30.0),
        ("file", ISS, "care_gaps", True, 30.0),  # merged from the defaults
        ("file", ISS, "allergies", False, 100.0),
        ("dashboard", ISS, "care_gaps", True, 50.0),
    ]
    identity.sign_in(ADMIN_1)
    page = client.get("/admin/rollout").get_data(as_text=True)
    assert page.count('data-source="file"') == 3 and page.count('data-source="dashboard"') == 1
    app.extensions["smartapp.db"].dispose()


def test_one_rule_decides_and_the_decision_names_its_source(tmp_path, identity):
    app = app_with_site_file(tmp_path, identity)
    client = app.test_client()

    def decision(kind, user="Practitioner/5"):
        return client.get(
            f"/admin/api/rollout/decision?site={ISS}&kind={kind}&fhir_user={user}",
            headers=bearer(),
        ).get_json()

    assert decision("allergies") == {
        "enabled": False,
        "reason": "Not enabled at this site.",
        "rule": None,
        "source": "file",
    }
    assert decision("medications")["source"] == "default"
    added = client.post(
        "/admin/api/rollout",
        json={"site": ISS, "kind": "allergies", "enabled": True, "percentage": 100},
        headers=bearer(),
    ).get_json()["rule"]
    # The dashboard's rule takes the place of the file's: they never stack.
    assert decision("allergies") == {
        "enabled": True,
        "reason": "Enabled at this site.",
        "rule": added["id"],
        "source": "dashboard",
    }
    app.extensions["smartapp.db"].dispose()


def test_a_file_rollout_at_thirty_percent_places_thirty_percent():
    site = parse_site_config(SITE_FILE)
    policy = Policy(
        site_config=site,
        governance=GovernanceState(version=1, rules=(), engines=(), killed=frozenset()),
    )
    shown = [
        "care_gaps" in policy.plan(iss=ISS, fhir_user=f"Practitioner/{n}", now=NOW).kinds
        for n in range(4000)
    ]
    assert 0.27 < sum(shown) / len(shown) < 0.33
    assert "allergies" not in policy.plan(iss=ISS, fhir_user="Practitioner/1", now=NOW).kinds


def test_the_policy_lists_the_settings_with_their_source_and_no_secret(tmp_path, identity):
    app = app_with_site_file(tmp_path, identity)
    client = app.test_client()
    assert client.get("/admin/api/policy/settings").status_code == 401
    listing = client.get("/admin/api/policy/settings", headers=bearer()).get_json()
    rows = {row["name"]: row for row in listing["settings"]}
    assert TOKEN not in json.dumps(listing)
    assert rows["SMARTAPP_ADMIN_TOKEN"] == {
        "name": "SMARTAPP_ADMIN_TOKEN",
        "value": "(secret, set)",
        "source": "environment",
        "secret": True,
    }
    assert rows["SMARTAPP_CONFIG"]["value"] == str(tmp_path / "site.toml")
    assert rows["SMARTAPP_MAX_PAGES"] == {
        "name": "SMARTAPP_MAX_PAGES",
        "value": "20",
        "source": "default",
        "secret": False,
    }
    assert (
        listing["version"]
        == client.get("/admin/api/policy/rollout", headers=bearer()).get_json()["version"]
    )
    app.extensions["smartapp.db"].dispose()


def test_a_policy_without_settings_lists_none():
    policy = Policy(
        site_config=parse_site_config(SITE_FILE),
        governance=GovernanceState(version=1, rules=(), engines=(), killed=frozenset()),
    )
    assert policy.settings_values() == ()
