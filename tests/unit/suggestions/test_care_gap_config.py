"""Unit: the `[care_gaps]` settings of the site configuration: the preventive rules' keys,
their defaults, and errors that name the file, the line and the key."""

from __future__ import annotations

from textwrap import dedent

import pytest

from smartapp.config import PROJECT_ROOT
from smartapp.siteconfig import (
    CARE_GAP_RULES,
    CareGapRules,
    SiteConfigError,
    load_site_config,
    parse_site_config,
)

ISS = "https://ehr.example.org/fhir"


def errors_of(text: str) -> list[str]:
    with pytest.raises(SiteConfigError) as caught:
        parse_site_config(dedent(text).lstrip("\n"))
    return list(caught.value.errors)


def test_every_rule_is_on_by_default_with_documented_thresholds():
    rules = load_site_config(None).default.care_gaps
    assert (
        rules.rules
        == CARE_GAP_RULES
        == (
            "hba1c_interval",
            "kidney_test_interval",
            "urine_albumin_interval",
            "bp_above_threshold",
            "bp_screening",
            "lipid_screening",
            "influenza_vaccine",
        )
    )
    assert (
        rules.urine_albumin_interval_months,
        rules.bp_screening_interval_months,
        rules.bp_screening_min_age,
        rules.lipid_interval_months,
        rules.lipid_min_age,
        rules.lipid_max_age,
        rules.influenza_interval_months,
    ) == (12, 12, 18, 60, 40, 75, 12)


def test_the_example_file_documents_every_rule_and_key_with_the_defaults():
    path = PROJECT_ROOT / "config" / "site.example.toml"
    assert load_site_config(path).default.care_gaps == CareGapRules()
    text = path.read_text(encoding="utf-8")
    for rule in CARE_GAP_RULES:
        assert f"#   {rule} " in text, rule
    for key, value in vars(CareGapRules()).items():
        if key not in ("rules", "packs"):  # packs: absent means every pack
            assert f"\n{key} = {value}\n" in text, key
    assert '# packs = ["uspstf", ' in text


def test_new_keys_are_read_and_merged_per_site():
    config = parse_site_config(
        dedent(
            f"""
            [care_gaps]
            rules = ["lipid_screening", "influenza_vaccine"]
            lipid_interval_months = 48
            lipid_min_age = 35
            influenza_interval_months = 11

            [sites."{ISS}".care_gaps]
            lipid_max_age = 80
            bp_screening_min_age = 40
            bp_screening_interval_months = 24
            urine_albumin_interval_months = 6
            """
        )
    )
    default = config.default.care_gaps
    assert default.rules == ("lipid_screening", "influenza_vaccine")
    assert (default.lipid_interval_months, default.lipid_min_age) == (48, 35)
    assert default.influenza_interval_months == 11
    site = config.for_issuer(ISS).care_gaps
    assert site.rules == default.rules and site.lipid_min_age == 35  # merged
    assert (site.lipid_max_age, site.bp_screening_min_age) == (80, 40)
    assert (site.bp_screening_interval_months, site.urine_albumin_interval_months) == (24, 6)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[care_gaps]\nrules = ["bp_screening", "colon_screening"]\n',
            "site.toml line 2: care_gaps.rules[1]: 'colon_screening' is not one of "
            + ", ".join(CARE_GAP_RULES),
        ),
        (
            "[care_gaps]\n\nlipid_interval_months = 0\n",
            "site.toml line 3: care_gaps.lipid_interval_months: must be a whole number from 1 "
            "to 120, not 0",
        ),
        (
            "[care_gaps]\ninfluenza_interval_months = 36\n",
            "site.toml line 2: care_gaps.influenza_interval_months: must be a whole number from "
            "1 to 24, not 36",
        ),
        (
            '[care_gaps]\nbp_screening_min_age = "18"\n',
            "site.toml line 2: care_gaps.bp_screening_min_age: must be a whole number from 0 to "
            "120, not '18'",
        ),
        (
            "[care_gaps]\nurine_albumin_interval_months = 12.5\n",
            "site.toml line 2: care_gaps.urine_albumin_interval_months: must be a whole number "
            "from 1 to 60, not 12.5",
        ),
        (
            "[care_gaps]\nbp_screening_interval_months = 12\nflu_months = 12\n",
            "site.toml line 3: care_gaps.flu_months: unknown key",
        ),
    ],
)
def test_bad_values_name_the_line_and_the_key(text, expected):
    [error] = errors_of(text)
    assert error.startswith(expected), error


def test_lipid_ages_must_make_a_range():
    assert errors_of(
        """
        [care_gaps]
        lipid_max_age = 75
        lipid_min_age = 76
        """
    ) == [
        "site.toml line 3: care_gaps.lipid_min_age: lipid_min_age (76) must not be more than "
        "lipid_max_age (75)"
    ]
    # A site's value is checked against the defaults it merges with, at the site's line.
    assert errors_of(
        f"""
        [care_gaps]
        lipid_min_age = 45

        [sites."{ISS}".care_gaps]
        lipid_max_age = 44
        """
    ) == [
        f'site.toml line 5: sites."{ISS}".care_gaps.lipid_max_age: lipid_min_age (45) must not '
        "be more than lipid_max_age (44)"
    ]
    # A bad default is reported once, not again for a site that sets neither age.
    assert (
        len(
            errors_of(
                f"""
            [care_gaps]
            lipid_min_age = 80

            [sites."{ISS}".care_gaps]
            bp_systolic = 130
            """
            )
        )
        == 1
    )
