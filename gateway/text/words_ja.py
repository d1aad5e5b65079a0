"""Word and phrase boundaries in unspaced Japanese, from MeCab (fugashi + UniDic), for the segmenter.

Without them the segmenter may cut between any two characters of unspaced text, and did:
"このレスト | ラン", "と | ても" (bench quality: Whisper heard "まだ期待です" for "また来たいです").
Here a cut falls only between MeCab's words, and is scored like an English one
(``gateway.text.phrases``): after a particle, before an independent word, is a phrase boundary
(the end of a bunsetsu: 料理は | とても); before a word that leans on the one in front (particles,
auxiliaries, suffixes, non-independent verbs: 着い | たら, 遅刻 | して) or after a prenominal or a
prefix (この | レストラン) it is BAD; anything else is an ordinary word boundary.

The answer at a position depends on a bounded window of the text around it (``LOOK_BACK`` and
``LOOK_AHEAD`` characters of the same unspaced run), never on what happened to have arrived: while
fewer than ``LOOK_AHEAD`` characters of the run follow it, the answer is None ("wait"), as
``phrases.boundary_score`` does for a word not yet received whole. MeCab's reading of "このレスト"
alone ends a word after レスト; with the rest of the run it does not.

One MeCab tagger per process (its dictionary is ~50 MB), behind a lock: segmenters run on the event
loop, but a process may run more than one.
"""

from __future__ import annotations

import logging
import threading
import unicodedata
from functools import lru_cache
from pathlib import Path

from gateway.text.phrases import BAD, PHRASE, WORD

__all__ = ["INSIDE_WORD", "JapaneseWords", "is_unspaced", "japanese_words"]

logger = logging.getLogger("voxgate.text")

#: ``JapaneseWords.score`` between two characters of one word: not a place to cut at all.
INSIDE_WORD = -1
#: Characters of the run before / after a position that MeCab reads to decide it.
LOOK_BACK = 12
LOOK_AHEAD = 6

# UniDic parts of speech (pos1) that lean on the word before them: a cut before one is BAD.
_DEPENDENT_POS = frozenset({"助詞", "助動詞", "接尾辞", "補助記号"})
# pos1 after which the next word belongs to the same phrase: a cut after one is BAD.
_BINDING_POS = frozenset({"連体詞", "接頭辞"})


def is_unspaced(ch: str) -> bool:
    """A character of unspaced Japanese text: wide, and a letter (kana, kanji, the long vowel mark)."""
    return unicodedata.east_asian_width(ch) in "WF" and (ch.isalpha() or ch in "ー々〆")


class JapaneseWords:
    """Boundaries and their scores between the characters of unspaced Japanese runs."""

    def __init__(self, tagger: object) -> None:
        self._tagger = tagger
        self._lock = threading.Lock()
        self._words = lru_cache(maxsize=4096)(self._read)

    def score(self, text: str, pos: int, *, final: bool) -> int | None:
        """Between ``text[pos - 1]`` and ``text[pos]`` (two characters of one unspaced run):
        ``INSIDE_WORD`` when that is inside a word, else the cut's score (``PHRASE``, ``WORD`` or ``BAD``); None while
        the run after ``pos`` has not arrived far enough to tell (unless ``final``)."""
        start = pos
        while start > 0 and pos - start < LOOK_BACK and is_unspaced(text[start - 1]):
            start -= 1
        end = pos
        while end < len(text) and end - pos < LOOK_AHEAD and is_unspaced(text[end]):
            end += 1
        if end == len(text) and end - pos < LOOK_AHEAD and not final:
            return None
        words = self._words(text[start:end])
        offset = pos - start
        for k in range(1, len(words)):
            at, before, after = words[k][0], words[k - 1][1], words[k][1]
            if at < offset:
                continue
            if at > offset:
                break
            # A verb that can lean on the word before (する, いる, ください) starts a phrase of its
            # own after a case or topic particle (宿題を | する), and leans otherwise (遅刻 | して,
            # して | ください after the て of a verb).
            leans = words[k][2] and (before != "助詞" or words[k - 1][3])
            if after in _DEPENDENT_POS or leans or before in _BINDING_POS:
                return BAD
            return PHRASE if before == "助詞" else WORD
        return INSIDE_WORD

    def _read(self, run: str) -> tuple[tuple[int, str, bool, bool], ...]:
        """(start offset, pos1, a verb that can lean on the word before, a て-form joint) for each
        MeCab word of ``run``."""
        words, at = [], 0
        with self._lock:  # a node is the tagger's until its next parse: read them all under the lock
            nodes = [(node.surface, node.feature.pos1, getattr(node.feature, "pos2", "")) for node in self._tagger(run)]  # type: ignore[operator]
        for surface, pos1, pos2 in nodes:
            found = run.find(surface, at) if surface else -1
            if found < 0:
                continue  # MeCab normalised it: no boundary to take from it
            leaning = pos2 == "非自立可能" and pos1 in ("動詞", "形容詞")
            words.append((found, pos1, leaning, pos2 == "接続助詞"))
            at = found + len(surface)
        return tuple(words)


@lru_cache(maxsize=1)
def japanese_words() -> JapaneseWords | None:
    """The process's ``JapaneseWords`` (a MeCab dictionary is ~50 MB: load it once), or None when
    fugashi or a UniDic dictionary is missing (then any two characters may be cut apart, as before)."""
    try:
        import fugashi

        from gateway.text.g2p_backends import unidic_dicdir

        dicdir, _ = unidic_dicdir()
        return JapaneseWords(fugashi.Tagger(f'-r "{Path(dicdir) / "mecabrc"}" -d "{dicdir}"'))
    except Exception as exc:  # noqa: BLE001 - any failure to load means: no word boundaries
        logger.warning("Japanese word boundaries unavailable (%s): cuts may fall inside words", type(exc).__name__)
        return None
