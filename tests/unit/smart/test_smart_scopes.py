"""Unit: granted scopes, SMART v2 and v1, plain and granular."""

from __future__ import annotations

import pytest

from smartapp.smart.scopes import GrantedScopes, ResourceScope


def test_v2_scopes_allow_exactly_their_letters():
    scopes = GrantedScopes("patient/Observation.rs patient/DocumentReference.crus")
    assert scopes.allows("Observation", "r")
    assert scopes.allows("Observation", "s")
    assert not scopes.allows("Observation", "c")
    assert scopes.allows("DocumentReference", "c")
    assert not scopes.allows("DocumentReference", "d")
    assert not scopes.allows("Condition", "r")


def test_v1_read_and_write_map_to_v2_letters():
    scopes = GrantedScopes("patient/Condition.read user/DocumentReference.write")
    assert scopes.allows("Condition", "r") and scopes.allows("Condition", "s")
    assert not scopes.allows("Condition", "u")
    for letter in "cud":
        assert scopes.allows("DocumentReference", letter)
    assert not scopes.allows("DocumentReference", "r")


def test_wildcards_v1_and_v2():
    v1 = GrantedScopes("patient/*.read")
    assert v1.allows("MedicationRequest", "s")
    assert not v1.allows("MedicationRequest", "c")
    assert v1.readable_types() == frozenset({"*"})
    assert GrantedScopes("user/*.*").allows("Provenance", "d")
    assert GrantedScopes("patient/*.cruds").allows("Provenance", "c")


def test_granular_scope_is_not_a_whole_type_grant():
    scopes = GrantedScopes(
        "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/"
        "observation-category|laboratory patient/Condition.rs"
    )
    assert not scopes.allows("Observation", "s")
    assert scopes.granular_queries("Observation", "s") == (
        "category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
    )
    assert scopes.granular_queries("Condition", "s") == ()
    assert scopes.readable_types() == frozenset({"Observation", "Condition"})


def test_plain_scopes_by_membership():
    scopes = GrantedScopes("launch openid fhirUser offline_access patient/Patient.rs")
    assert "openid" in scopes
    assert "offline_access" in scopes
    assert "online_access" not in scopes
    assert "patient/Patient.rs" in scopes
    assert str(scopes) == "launch openid fhirUser offline_access patient/Patient.rs"


def test_malformed_scopes_grant_nothing():
    scopes = GrantedScopes("patient/Observation.rx patient/observation.rs patient/Observation.rrs")
    assert not scopes.allows("Observation", "r")
    assert scopes.readable_types() == frozenset()
    assert ResourceScope.parse("patient/Observation.read?category=x") is None


def test_empty_or_missing_scope():
    assert len(GrantedScopes(None)) == 0
    assert not GrantedScopes("").allows("Patient", "r")


def test_missing_reports_what_was_not_granted():
    requested = GrantedScopes("launch openid patient/Patient.rs patient/Condition.rs")
    granted = GrantedScopes("launch patient/Patient.rs")
    assert granted.missing(requested) == ("openid", "patient/Condition.rs")


def test_unknown_interaction_is_a_programming_error():
    with pytest.raises(ValueError, match="c r u d s"):
        GrantedScopes("patient/Patient.rs").allows("Patient", "read")
