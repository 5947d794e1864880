"""How hard a patient-facing text is to read: the Flesch-Kincaid grade level.

grade = 0.39 × words per sentence + 11.8 × syllables per word − 15.59 (Kincaid et al.,
1975, "Derivation of new readability formulas for Navy enlisted personnel"). Syllables
are counted by vowel groups, the usual approximation; a number or a unit counts as one
word of one syllable, since a reader takes "22" or "mg" in at a glance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*|\d[\d.,/:-]*")
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)|\n+")
_VOWELS = re.compile(r"[aeiouy]+")


def syllables(word: str) -> int:
    word = word.lower().strip("'’-")
    if not word or not word[0].isalpha():
        return 1
    count = len(_VOWELS.findall(word))
    if word.endswith("e") and not word.endswith(("le", "ee", "ye")) and count > 1:
        count -= 1  # a silent final e: "take", "time"
    if (
        word.endswith(("es", "ed"))
        and count > 1
        and not word.endswith(("tes", "des", "ted", "ded"))
    ):
        count -= 1  # "takes", "asked"
    return max(1, count)


@dataclass(frozen=True, kw_only=True)
class Readability:
    sentences: int
    words: int
    syllables: int

    @property
    def grade(self) -> float:
        if not self.words:
            return 0.0
        return round(
            0.39 * self.words / max(1, self.sentences) + 11.8 * self.syllables / self.words - 15.59,
            1,
        )


def readability(text: str) -> Readability:
    sentences = [s for s in _SENTENCE_END.split(text) if _WORD.search(s)]
    words = _WORD.findall(text)
    return Readability(
        sentences=len(sentences), words=len(words), syllables=sum(syllables(w) for w in words)
    )


def grade_level(text: str) -> float:
    """The Flesch-Kincaid grade of `text` (0 for a text without words)."""
    return readability(text).grade
