"""Unit: `smartapp check ISS` against faked servers (`responses`): each requirement's line."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
import requests
import responses

from smartapp.check import AppProfile, CheckReport, check_server
from smartapp.cli import main

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "check"
ISS = "https://ehr.example.org/fhir"
WELL_KNOWN = f"{ISS}/.well-known/smart-configuration"
METADATA = f"{ISS}/metadata"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


@pytest.fixture
def smart_config() -> dict[str, Any]:
    return fixture("smart-configuration.json")


@pytest.fixture
def capability() -> dict[str, Any]:
    return fixture("capability-statement.json")


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def profile(**environ: str) -> AppProfile:
    """The app's needs from launch.json and an explicit environment (never os.environ)."""
    return AppProfile.from_env(environ)


def serve(
    rsps: responses.RequestsMock,
    smart_config: dict[str, Any] | None,
    capability: dict[str, Any] | None,
) -> None:
    if smart_config is None:
        rsps.get(WELL_KNOWN, status=404, json={"error": "not found"})
    else:
        rsps.get(WELL_KNOWN, json=smart_config)
    if capability is None:
        rsps.get(METADATA, status=401)
    else:
        rsps.get(METADATA, json=capability, content_type="application/fhir+json")


def run(
    rsps: responses.RequestsMock,
    smart_config: dict[str, Any] | None,
    capability: dict[str, Any] | None,
    **environ: str,
) -> CheckReport:
    serve(rsps, smart_config, capability)
    return check_server(ISS, profile=profile(**environ), http=requests.Session(), timeout=3.0)


def line(report: CheckReport, key: str) -> Any:
    found = [item for item in report.lines if item.key == key]
    assert len(found) == 1, (key, [item.key for item in report.lines])
    return found[0]


def statuses(report: CheckReport) -> dict[str, str]:
    return {item.key: item.status for item in report.lines}


def without_capability(data: dict[str, Any], name: str) -> dict[str, Any]:
    changed = copy.deepcopy(data)
    changed["capabilities"] = [c for c in changed["capabilities"] if c != name]
    return changed


def type_entry(capability: dict[str, Any], rtype: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = capability["rest"][0]["resource"]
    return next(r for r in entries if r["type"] == rtype)


def test_a_server_with_everything_the_app_uses_is_all_ok(rsps, smart_config, capability):
    report = run(rsps, smart_config, capability, SMARTAPP_ALLOWED_ISSUERS=ISS)
    assert report.launchable and report.exit_code == 0
    assert {key: s for key, s in statuses(report).items() if s != "ok"} == {}
    for key in (
        "iss-https",
        "allow-list",
        "reachable",
        "smart-configuration",
        "endpoints",
        "pkce",
        "launch-ehr",
        "launch-standalone",
        "client-auth",
        "context-ehr-patient",
        "sso-openid-connect",
        "permission-offline",
        "scopes-version",
        "capability-statement",
        "fhir-version",
        "json-format",
        "batch",
        "transaction",
        "read:Patient",
        "read:Encounter",
        "read:Medication",
        "search:Condition",
        "search:Observation",
        "search:MedicationRequest",
        "search:AllergyIntolerance",
        "search:Procedure",
        "search:Immunization",
        "search:DocumentReference",
        "include-medication",
        "write:DocumentReference",
        "update:DocumentReference",
        "write:Provenance",
    ):
        assert statuses(report)[key] == "ok", key
    assert "can be registered and launched" in report.format_text()


def test_the_check_never_sends_a_token_and_always_sets_a_timeout(rsps, smart_config, capability):
    run(rsps, smart_config, capability)
    assert len(rsps.calls) == 2
    for call in rsps.calls:
        assert "Authorization" not in call.request.headers
        assert "Cookie" not in call.request.headers
        assert call.request.req_kwargs["timeout"] is not None
    assert rsps.calls[0].request.headers["Accept"] == "application/json"
    assert rsps.calls[1].request.headers["Accept"] == "application/fhir+json"


def test_an_issuer_not_yet_allowed_is_checked_and_named_as_a_warning(
    rsps, smart_config, capability
):
    report = run(rsps, smart_config, capability, SMARTAPP_ALLOWED_ISSUERS="https://other/fhir")
    allow = line(report, "allow-list")
    assert allow.status == "warn"
    assert "SMARTAPP_ALLOWED_ISSUERS" in allow.why
    assert report.exit_code == 0


@pytest.mark.parametrize("methods", [["plain"], [], None])
def test_a_server_without_s256_fails(rsps, smart_config, capability, methods):
    if methods is None:
        del smart_config["code_challenge_methods_supported"]
    else:
        smart_config["code_challenge_methods_supported"] = methods
    report = run(rsps, smart_config, capability)
    pkce = line(report, "pkce")
    assert pkce.status == "fail"
    assert "S256" in pkce.why
    assert report.exit_code == 1
    assert "CANNOT be launched" in report.format_text()


def test_s256_with_plain_is_a_warning(rsps, smart_config, capability):
    smart_config["code_challenge_methods_supported"] = ["S256", "plain"]
    report = run(rsps, smart_config, capability)
    assert line(report, "pkce").status == "warn"
    assert report.exit_code == 0


def test_a_server_without_batch_is_a_warning_about_the_slower_path(rsps, smart_config, capability):
    capability["rest"][0]["interaction"] = [{"code": "transaction"}]
    report = run(rsps, smart_config, capability)
    batch = line(report, "batch")
    assert batch.status == "warn"
    assert "slower" in batch.why
    assert line(report, "transaction").status == "ok"
    assert report.exit_code == 0


def test_without_transaction_the_note_is_two_creates(rsps, smart_config, capability):
    capability["rest"][0]["interaction"] = [{"code": "batch"}]
    report = run(rsps, smart_config, capability)
    assert line(report, "transaction").status == "warn"
    assert "two creates" in line(report, "transaction").why
    assert report.exit_code == 0


def test_without_well_known_the_deprecated_fallback_is_a_warning(rsps, capability):
    report = run(rsps, None, capability)
    config = line(report, "smart-configuration")
    assert config.status == "warn"
    assert "deprecated" in config.detail
    assert line(report, "endpoints").status == "ok"
    # Nothing declares PKCE or capabilities in the fallback: said, not failed.
    assert line(report, "pkce").status == "warn"
    assert line(report, "capabilities").status == "warn"
    assert report.exit_code == 0


def test_no_smart_configuration_anywhere_fails(rsps, capability):
    del capability["rest"][0]["security"]["extension"]
    report = run(rsps, None, capability)
    assert line(report, "smart-configuration").status == "fail"
    assert report.exit_code == 1


def test_unusable_fallback_oauth_uris_fail_without_a_traceback(rsps, capability):
    uris = capability["rest"][0]["security"]["extension"][0]["extension"]
    uris[0]["valueUri"] = "not a url"
    report = run(rsps, None, capability)
    config = line(report, "smart-configuration")
    assert config.status == "fail"
    assert "authorize" in config.detail
    assert report.exit_code == 1


def test_an_unreachable_server_fails_with_the_reason(rsps):
    rsps.get(WELL_KNOWN, body=requests.ConnectionError("refused"))
    rsps.get(METADATA, body=requests.ConnectionError("refused"))
    report = check_server(ISS, profile=profile(), http=requests.Session(), timeout=1.0)
    reachable = line(report, "reachable")
    assert reachable.status == "fail"
    assert "ConnectionError" in reachable.detail
    assert report.exit_code == 1


def test_a_server_error_on_well_known_fails(rsps, capability):
    rsps.get(WELL_KNOWN, status=503)
    rsps.get(METADATA, json=capability)
    report = check_server(ISS, profile=profile(), http=requests.Session(), timeout=1.0)
    assert line(report, "smart-configuration").status == "fail"
    assert "503" in line(report, "smart-configuration").detail


def test_http_endpoints_fail_off_loopback(rsps, smart_config, capability):
    smart_config["token_endpoint"] = "http://ehr.example.org/oauth2/token"
    report = run(rsps, smart_config, capability)
    endpoints = line(report, "endpoints")
    assert endpoints.status == "fail"
    assert report.exit_code == 1


def test_an_http_issuer_off_loopback_fails(rsps, smart_config, capability):
    iss = "http://ehr.example.org/fhir"
    rsps.get(f"{iss}/.well-known/smart-configuration", json=smart_config)
    rsps.get(f"{iss}/metadata", json=capability)
    report = check_server(iss, profile=profile(), http=requests.Session(), timeout=1.0)
    assert line(report, "iss-https").status == "fail"
    assert report.exit_code == 1


@pytest.mark.parametrize(
    ("capability_name", "key", "status"),
    [
        ("launch-ehr", "launch-ehr", "fail"),
        ("context-ehr-patient", "context-ehr-patient", "fail"),
        ("client-public", "client-auth", "fail"),
        ("launch-standalone", "launch-standalone", "warn"),
        ("permission-offline", "permission-offline", "warn"),
        ("sso-openid-connect", "sso-openid-connect", "warn"),
        ("permission-v2", "scopes-version", "warn"),
    ],
)
def test_each_missing_smart_capability_is_reported(
    rsps, smart_config, capability, capability_name, key, status
):
    report = run(rsps, without_capability(smart_config, capability_name), capability)
    assert line(report, key).status == status
    assert report.exit_code == (1 if status == "fail" else 0)


def test_a_confidential_app_needs_the_confidential_capability(rsps, smart_config, capability):
    smart_config = without_capability(smart_config, "client-confidential-symmetric")
    report = run(rsps, smart_config, capability, SMARTAPP_CLIENT_SECRET="s3cret-not-shown")
    auth = line(report, "client-auth")
    assert auth.status == "fail"
    assert "SMARTAPP_CLIENT_SECRET" in auth.why
    assert auth.why.startswith("the app is a confidential client (SMARTAPP_CLIENT_SECRET is set)")
    assert "s3cret-not-shown" not in report.format_text()


def test_openid_without_jwks_uri_fails_because_the_id_token_cannot_be_verified(
    rsps, smart_config, capability
):
    del smart_config["jwks_uri"]
    report = run(rsps, smart_config, capability)
    assert line(report, "sso-openid-connect").status == "fail"


def test_a_server_that_is_not_r4_fails(rsps, smart_config, capability):
    capability["fhirVersion"] = "3.0.2"
    report = run(rsps, smart_config, capability)
    assert line(report, "fhir-version").status == "fail"
    assert report.exit_code == 1


def test_without_patient_read_the_app_cannot_work(rsps, smart_config, capability):
    type_entry(capability, "Patient")["interaction"] = [{"code": "search-type"}]
    report = run(rsps, smart_config, capability)
    assert line(report, "read:Patient").status == "fail"
    assert report.exit_code == 1


def test_a_type_without_patient_search_is_a_warning(rsps, smart_config, capability):
    entry = type_entry(capability, "Immunization")
    entry["searchParam"] = [{"name": "date", "type": "date"}]
    report = run(rsps, smart_config, capability)
    immunization = line(report, "search:Immunization")
    assert immunization.status == "warn"
    assert "patient" in immunization.detail
    assert report.exit_code == 0


def test_medication_statement_not_offered_is_fine_and_offered_is_checked(
    rsps, smart_config, capability
):
    # The shared statement does not list MedicationStatement (US Core 4+ dropped it).
    report = run(rsps, smart_config, capability)
    statement = line(report, "search:MedicationStatement")
    assert statement.status == "ok" and "only where the server offers it" in statement.why
    rsps.reset()
    offered = copy.deepcopy(capability)
    offered["rest"][0]["resource"].append(
        {"type": "MedicationStatement", "interaction": [{"code": "read"}]}
    )
    report = run(rsps, smart_config, offered)
    assert line(report, "search:MedicationStatement").status == "warn"


def test_no_include_and_no_conditional_create_are_warnings(rsps, smart_config, capability):
    del type_entry(capability, "MedicationRequest")["searchInclude"]
    del type_entry(capability, "Provenance")["conditionalCreate"]
    report = run(rsps, smart_config, capability)
    assert line(report, "include-medication").status == "warn"
    assert line(report, "write:Provenance").status == "warn"
    assert report.exit_code == 0


def test_metadata_behind_a_token_is_a_warning_not_a_failure(rsps, smart_config):
    report = run(rsps, smart_config, None)
    assert line(report, "capability-statement").status == "warn"
    assert "401" in line(report, "capability-statement").detail
    assert report.exit_code == 0


def test_the_command_prints_json_and_exits_by_the_verdict(
    rsps, smart_config, capability, capsys, monkeypatch, tmp_path
):
    monkeypatch.chdir(tmp_path)  # no developer .env
    for name in ("SMARTAPP_CLIENT_SECRET", "SMARTAPP_PRIVATE_KEY", "SMARTAPP_LAUNCH_JSON"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SMARTAPP_ALLOWED_ISSUERS", ISS)
    smart_config["code_challenge_methods_supported"] = ["plain"]
    serve(rsps, smart_config, capability)
    assert main(["check", "--json", ISS + "/"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["iss"] == ISS
    assert report["launchable"] is False and report["exit_code"] == 1
    assert report["summary"]["fail"] == 1
    pkce = next(c for c in report["checks"] if c["key"] == "pkce")
    assert set(pkce) == {"status", "key", "what", "detail", "why"}
    assert pkce["status"] == "fail"


def test_the_command_prints_one_line_per_check(
    rsps, smart_config, capability, capsys, monkeypatch, tmp_path
):
    monkeypatch.chdir(tmp_path)
    serve(rsps, smart_config, capability)
    assert main(["check", ISS]) == 0
    out = capsys.readouterr().out
    assert "  ok    PKCE S256" in out
    assert "can be registered and launched" in out


@pytest.mark.parametrize(
    "argv", [["check", "ehr.example.org/fhir"], ["check", "ftp://x/fhir"], ["check", ISS + "?a=1"]]
)
def test_a_bad_issuer_is_bad_usage(argv, capsys):
    assert main(argv) == 2
    assert "smartapp check:" in capsys.readouterr().err


def test_a_missing_issuer_is_bad_usage():
    with pytest.raises(SystemExit) as exited:
        main(["check"])
    assert exited.value.code == 2


def test_the_quirks_profile_and_what_it_changes_are_reported(rsps, smart_config, capability):
    report = run(rsps, smart_config, capability)
    assert line(report, "quirks-profile").detail == (
        "generic (Any other FHIR R4 server); changes: sort"
    )
    assert line(report, "sort-newest").detail == "_sort=-date"
    epic = {**copy.deepcopy(capability), "software": {"name": "Epic"}, "publisher": "Epic"}
    del type_entry(epic, "Observation")["searchParam"][-1]  # no _sort declared
    rsps.reset()
    report = run(rsps, smart_config, epic)
    assert line(report, "quirks-profile").detail.startswith("epic (Epic); changes: ")
    assert "detected from the CapabilityStatement" in line(report, "quirks-profile").why
    required = line(report, "quirk-required_search")
    assert "category" in required.detail
    assert "https://open.epic.com/Clinical/Observation" in required.why
    assert line(report, "sort-newest").status == "warn"
    assert "may not have been read" in line(report, "sort-newest").why


def site_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "site.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_the_site_files_quirks_profile_for_the_issuer_is_the_one_reported(
    rsps, smart_config, capability, tmp_path
):
    # The statement names no family (generic); the site file says this issuer is Epic.
    config = site_file(tmp_path, f'[sites."{ISS}/".ehr]\nquirks = "epic"\n')
    report = run(rsps, smart_config, capability, SMARTAPP_CONFIG=config)
    chosen = line(report, "quirks-profile")
    assert chosen.detail == (
        "epic (Epic); changes: required_search, fhir_user_absolute, refresh_rotates"
    )
    assert 'set for this issuer in the site file site.toml (ehr.quirks = "epic")' in chosen.why
    assert "the CapabilityStatement alone would give generic" in chosen.why
    assert "category" in line(report, "quirk-required_search").detail


def test_a_site_file_naming_another_issuer_leaves_detection_alone(
    rsps, smart_config, capability, tmp_path
):
    config = site_file(tmp_path, '[sites."https://other.example/fhir".ehr]\nquirks = "epic"\n')
    athena = {**copy.deepcopy(capability), "software": {"name": "athenaOne FHIR"}}
    del smart_config["code_challenge_methods_supported"]
    report = run(rsps, smart_config, athena, SMARTAPP_CONFIG=config)
    assert line(report, "quirks-profile").detail.startswith("athena ")
    assert "detected from the CapabilityStatement" in line(report, "quirks-profile").why
    assert statuses(report)["pkce"] == "warn"


def test_the_site_files_profile_decides_the_pkce_leniency(rsps, smart_config, capability, tmp_path):
    # Metadata without PKCE methods: refused, unless the site file says it is athena.
    del smart_config["code_challenge_methods_supported"]
    config = site_file(tmp_path, f'[sites."{ISS}".ehr]\nquirks = "athena"\n')
    report = run(rsps, smart_config, capability, SMARTAPP_CONFIG=config)
    assert statuses(report)["pkce"] == "warn"


def test_a_broken_site_file_fails_the_check_and_says_why(rsps, smart_config, capability, tmp_path):
    config = site_file(tmp_path, f'[sites."{ISS}".ehr]\nquirks = "nosuchvendor"\n')
    report = run(rsps, smart_config, capability, SMARTAPP_CONFIG=config)
    broken = line(report, "site-file")
    assert broken.status == "fail"
    assert "site.toml cannot be used" in broken.detail and "nosuchvendor" in broken.detail
    assert line(report, "quirks-profile").detail.startswith("generic ")


def test_a_configuration_redirected_to_another_host_is_reported(rsps, capability):
    # The app refuses this redirect at launch (smartapp/redirects.py): the check says so.
    rsps.get(WELL_KNOWN, status=302, headers={"Location": "https://elsewhere.test/cfg"})
    rsps.get("https://elsewhere.test/cfg", json={"authorization_endpoint": "x"})
    rsps.get(METADATA, json=capability, content_type="application/fhir+json")
    report = check_server(ISS, profile=profile(), http=requests.Session(), timeout=3.0)
    assert "https://elsewhere.test" in report.format_text()
    assert "does not follow" in report.format_text()
    assert all("elsewhere.test" not in c.request.url for c in rsps.calls)
    assert statuses(report)["smart-configuration"] == "fail"
    assert not report.launchable


def test_an_athena_server_without_pkce_methods_is_a_warning_not_a_failure(
    rsps, smart_config, capability
):
    del smart_config["code_challenge_methods_supported"]
    report = run(rsps, smart_config, capability)
    assert statuses(report)["pkce"] == "fail"
    rsps.reset()
    athena = {**copy.deepcopy(capability), "software": {"name": "athenaOne FHIR"}}
    report = run(rsps, smart_config, athena)
    assert statuses(report)["pkce"] == "warn"
    assert "does S256 without listing it" in line(report, "pkce").why


def cds_clients_file(tmp_path: Path, *, server: str = ISS) -> str:
    path = tmp_path / "cds-clients.toml"
    path.write_text(
        '[[client]]\niss = "https://ehr.example.org"\n'
        'jwks_url = "https://ehr.example.org/cds/jwks.json"\n'
        f'fhir_servers = ["{server}"]\n'
    )
    return str(path)


def test_without_a_cds_client_registration_the_hooks_line_says_calls_are_refused(
    rsps, smart_config, capability
):
    report = run(rsps, smart_config, capability, SMARTAPP_ALLOWED_ISSUERS=ISS)
    hooks = line(report, "cds-hooks")
    assert hooks.status == "ok" and "no EHR registered" in hooks.detail
    assert "cds-hooks-jwks" not in statuses(report)


def test_a_registered_ehr_with_keys_at_its_jwks_url_is_ok(rsps, smart_config, capability, tmp_path):
    from joserfc.jwk import ECKey

    key = ECKey.generate_key("P-384").as_dict(private=False)
    rsps.get("https://ehr.example.org/cds/jwks.json", json={"keys": [key]})
    report = run(
        rsps,
        smart_config,
        capability,
        SMARTAPP_ALLOWED_ISSUERS=ISS,
        SMARTAPP_CDS_CLIENTS=cds_clients_file(tmp_path),
    )
    assert "https://ehr.example.org registered" in line(report, "cds-hooks").detail
    assert line(report, "cds-hooks-jwks").status == "ok"


def test_a_registered_ehr_whose_jwks_does_not_answer_is_a_warning(
    rsps, smart_config, capability, tmp_path
):
    rsps.get("https://ehr.example.org/cds/jwks.json", status=404)
    report = run(
        rsps,
        smart_config,
        capability,
        SMARTAPP_ALLOWED_ISSUERS=ISS,
        SMARTAPP_CDS_CLIENTS=cds_clients_file(tmp_path),
    )
    assert line(report, "cds-hooks-jwks").status == "warn"
    assert report.launchable


def test_a_cds_client_file_naming_a_server_not_allowed_fails(
    rsps, smart_config, capability, tmp_path
):
    report = run(
        rsps,
        smart_config,
        capability,
        SMARTAPP_ALLOWED_ISSUERS=ISS,
        SMARTAPP_CDS_CLIENTS=cds_clients_file(tmp_path, server="https://other.example.org/fhir"),
    )
    hooks = line(report, "cds-hooks")
    assert hooks.status == "fail" and "SMARTAPP_ALLOWED_ISSUERS" in hooks.detail


def test_the_command_reads_the_site_file_dotenv_names(
    rsps, smart_config, capability, capsys, monkeypatch, tmp_path
):
    """`smartapp check` reads its configuration as `serve` does (`read_sources`): a `.env`
    naming the site file, with nothing of the kind in the process environment."""
    for name in [n for n in os.environ if n.startswith("SMARTAPP_")]:
        monkeypatch.delenv(name)
    config = site_file(tmp_path, f'[sites."{ISS}/".ehr]\nquirks = "epic"\n')
    (tmp_path / ".env").write_text(f"SMARTAPP_CONFIG={config}\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    serve(rsps, smart_config, capability)
    main(["check", "--json", ISS])
    report = json.loads(capsys.readouterr().out)
    quirks = next(c for c in report["checks"] if c["key"] == "quirks-profile")
    assert quirks["detail"].startswith("epic (Epic)")
    assert "set for this issuer in the site file site.toml" in quirks["why"]


def test_the_report_lists_each_setting_with_its_source_and_no_secret(
    rsps, smart_config, capability, capsys, monkeypatch, tmp_path
):
    """`smartapp check` shows the settings `serve` would read: value (a secret's never) and
    where it came from; it writes nothing (no instance folder, no generated key)."""
    for name in [n for n in os.environ if n.startswith("SMARTAPP_")]:
        monkeypatch.delenv(name)
    (tmp_path / ".env").write_text("SMARTAPP_MAX_PAGES=7\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SMARTAPP_ALLOWED_ISSUERS", ISS)
    monkeypatch.setenv("SMARTAPP_CLIENT_SECRET", "s3cret-never-printed")
    serve(rsps, smart_config, capability)
    assert main(["check", "--json", ISS]) == 0
    printed = capsys.readouterr().out
    assert "s3cret-never-printed" not in printed
    settings = {row["name"]: row for row in json.loads(printed)["settings"]}
    assert settings["SMARTAPP_MAX_PAGES"] == {
        "name": "SMARTAPP_MAX_PAGES",
        "value": "7",
        "source": f".env ({tmp_path.resolve() / '.env'})",
        "secret": False,
    }
    assert settings["SMARTAPP_CLIENT_SECRET"]["value"] == "(secret, set)"
    assert settings["SMARTAPP_CLIENT_SECRET"]["source"] == "environment"
    assert settings["SMARTAPP_SNAPSHOT_TTL"]["source"] == "default"
    assert not (tmp_path / "instance").exists()

    serve(rsps, smart_config, capability)
    assert main(["check", ISS]) == 0
    text = capsys.readouterr().out
    assert "Settings (value, where it came from):" in text
    assert "SMARTAPP_CLIENT_SECRET" in text and "(secret, set)  from environment" in text
    assert "s3cret-never-printed" not in text
    assert text.rstrip().endswith("everything it uses is supported.")


def test_settings_the_app_would_refuse_fail_the_check(rsps, smart_config, capability):
    report = run(
        rsps, smart_config, capability, SMARTAPP_ALLOWED_ISSUERS=ISS, SMARTAPP_MAX_PAGES="0"
    )
    settings = line(report, "settings")
    assert settings.status == "fail"
    assert "SMARTAPP_MAX_PAGES must be at least 1" in settings.detail
    assert "(set in the environment)" in settings.detail
    assert report.exit_code == 1
