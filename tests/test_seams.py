"""Seams on the G2P side: a piece's phonemes with its neighbours' words around them (real English G2P)."""

from __future__ import annotations

import pytest

from gateway.text.g2p import G2P
from gateway.text.seams import with_context
from gateway.text.segmenter import Seam


@pytest.fixture(scope="module")
def english() -> G2P:
    g2p = G2P("en")
    g2p.load()
    return g2p


def test_the_seam_words_are_phonemized_around_the_piece_which_stays_as_g2p_gave_it(english: G2P) -> None:
    parts = english.phonemize("fox jumped over")
    (piece,) = with_context(english, parts, Seam("The quick brown", "the lazy dog."))
    assert (piece.phonemes, piece.text, piece.words) == (parts[0].phonemes, parts[0].text, tuple(parts[0].words))
    assert piece.left_context == english.phonemize("The quick brown")[0].phonemes + " "
    assert piece.right_context == " " + english.phonemize("the lazy dog.")[0].phonemes
    assert with_context(english, parts, Seam())[0].left_context == ""


def test_where_g2p_splits_a_long_text_the_parts_are_each_others_context() -> None:
    g2p = G2P("en", max_phonemes=40)
    parts = g2p.phonemize("the quick brown fox jumped over the lazy dog and ran far away into the dark green woods")
    assert len(parts) >= 2
    pieces = with_context(g2p, parts, Seam("", "tonight"))
    assert pieces[0].left_context == "" and pieces[-1].right_context.startswith(" ")
    for before, after in zip(pieces, pieces[1:]):
        assert before.right_context.strip() and before.phonemes.endswith(after.left_context.strip())
        assert after.phonemes.startswith(before.right_context.strip())
