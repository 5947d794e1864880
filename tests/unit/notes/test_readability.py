"""Unit: the Flesch-Kincaid grade used to hold patient instructions to the site's level."""

from __future__ import annotations

import pytest

from smartapp.notes.readability import grade_level, readability, syllables


@pytest.mark.parametrize(
    ("word", "count"),
    [("cat", 1), ("take", 1), ("water", 2), ("medicine", 3), ("pharmacist", 3), ("22", 1)],
)
def test_syllables_by_vowel_groups(word, count):
    assert syllables(word) == count


def test_short_plain_sentences_read_at_a_low_grade_and_long_ones_high():
    plain = "Take your pills each day. Call us if you feel sick."
    hard = (
        "Pharmacological anticoagulation necessitates meticulous international normalized "
        "ratio surveillance, particularly following therapeutic modifications."
    )
    assert grade_level(plain) < 3
    assert grade_level(hard) > 12
    assert readability(plain).sentences == 2 and readability(plain).words == 11


def test_dates_and_numbers_count_as_one_short_word():
    assert readability("Your last test was 22 on 2026-11-01.").words == 7
    assert grade_level("") == 0.0
