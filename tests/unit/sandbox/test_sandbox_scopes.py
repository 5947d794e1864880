"""Unit: SMART scope parsing, granting and checking (v1 and v2 forms)."""

from __future__ import annotations

from smartapp.sandbox.scopes import Grant, grant, parse_resource_scope


def test_parse_v1_and_v2_scopes():
    v1 = parse_resource_scope("patient/Observation.read")
    assert v1 is not None and v1.permissions == frozenset("rs") and v1.v1
    v2 = parse_resource_scope("user/*.cruds")
    assert v2 is not None and v2.resource_type == "*" and v2.permissions == frozenset("cruds")
    granular = parse_resource_scope("patient/Observation.rs?category=laboratory")
    assert granular is not None and granular.query == (("category", "laboratory"),)
    assert parse_resource_scope("patient/Observation.sr") is None  # v2 order is c r u d s
    assert parse_resource_scope("openid") is None


def test_grant_narrows_to_the_registration():
    registered = ["launch", "openid", "fhirUser", "patient/*.rs", "patient/DocumentReference.cu"]
    assert grant(["patient/Observation.read"], registered) == ["patient/Observation.read"]
    assert grant(["patient/Observation.cruds"], registered) == ["patient/Observation.rs"]
    assert grant(["patient/DocumentReference.write"], registered) == [
        "patient/DocumentReference.cu"
    ]
    assert grant(["user/Observation.rs", "system/*.rs"], registered) == []
    assert grant(["offline_access", "profile"], registered) == []
    assert grant(["launch/patient", "launch/encounter"], registered) == [
        "launch/patient",
        "launch/encounter",
    ]
    assert grant(["nonsense", "openid", "openid"], registered) == ["openid"]


def test_grant_check_reports_compartment_and_queries():
    token = Grant(["patient/Observation.rs?category=vital-signs", "user/Patient.rs", "patient/*.c"])
    observation = token.check("Observation", "s")
    assert observation.allowed and observation.compartment
    assert observation.queries == ((("category", "vital-signs"),),)
    assert not token.check("Observation", "u").allowed
    assert token.check("Patient", "r").allowed and not token.check("Patient", "r").compartment
    assert token.check("DocumentReference", "c").allowed
    assert not token.check("Condition", "r").allowed
