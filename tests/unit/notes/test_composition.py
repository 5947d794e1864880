"""Unit: where a note's characters came from (accepted, edited, typed by the clinician)."""

from smartapp.notes.composition import Contribution, composition


def test_accepted_edited_and_typed_characters_are_told_apart():
    accepted = "HbA1c 8.1 % on 2026-10-01."
    edited = "Continue metformin 500 mg twice daily."
    typed = "Patient reports good adherence."
    note = f"Assessment\n{accepted}\n{edited}\n{typed}"
    result = composition(
        note,
        [Contribution(action="accept", text=accepted), Contribution(action="edit", text=edited)],
    )
    assert (result.accepted, result.edited, result.edits) == (len(accepted), len(edited), 1)
    assert result.typed == len(note) - len(accepted) - len(edited)


def test_a_contribution_rewritten_in_the_note_counts_as_typed():
    result = composition(
        "BP fine today.", [Contribution(action="accept", text="Blood pressure 150/95.")]
    )
    assert result.accepted == 0 and result.typed == len("BP fine today.")


def test_the_same_text_twice_in_the_suggestions_is_counted_once():
    text = "No known drug allergies."
    result = composition(
        text, [Contribution(action="accept", text=text), Contribution(action="accept", text=text)]
    )
    assert result.accepted == len(text) and result.typed == 0
