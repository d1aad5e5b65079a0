"""Danmaku text as viewers say it: netspeak, laughter, repeats and emoji, before G2P.

Chat is not prose. Read literally, "666" is "six hundred sixty-six" (streamers mean "six six six":
well played), "6666" "sixty-six sixty-six", "哈哈哈哈哈哈哈" seven syllables of laughter, "www" the
letters "double-u double-u double-u" (Japanese laughter), "loooool" a guess. ``NetspeakNormalizer``
rewrites a comment into what a streamer would say, per language (``en``, ``zh``, ``ja``):

1. ``replacements`` from the config: whole words (Latin) or substrings (CJK), case-insensitive;
2. emoji: dropped, or named from ``EMOJI_NAMES`` and ``emoji_names`` (a run of one emoji once);
3. laughter: "lol"/"lolol"/"lool" one "lol", "lmao" spelled, "www"/"ｗｗｗ" and "2333" laughter in the
   line's language, "hhhh" (Chinese laughter) likewise;
4. one digit typed three times or more ("666", "8888"): read digit by digit, at most
   ``max_repeat`` times ("six six six six");
5. repeats: a Latin letter 3+ times kept twice ("sooooo" soo), a CJK character 4+ times three
   times (哈哈哈), a 2-4 character unit 4+ times three times ("hahahahaha" hahaha), a word 4+
   times three times, punctuation runs once ("!!!" !, "。。。" …).

Pure functions of the text; the table is configurable (``[danmaku]`` ``netspeak``, ``emoji``,
``emoji_names``, ``replacements``). Not its job: dedup keys (``danmaku_policy.normalize_comment``),
mixed scripts (``gateway.text.mixed``), numbers in prose (the G2P reads "16" as sixteen).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from gateway.config import DanmakuConfig

__all__ = ["NetspeakNormalizer", "EMOJI_NAMES", "DIGIT_NAMES", "LAUGHTER"]

#: Digits read one by one, per language.
DIGIT_NAMES: dict[str, tuple[str, ...]] = {
    "en": ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"),
    "zh": ("零", "一", "二", "三", "四", "五", "六", "七", "八", "九"),
    "ja": ("ゼロ", "いち", "に", "さん", "よん", "ご", "ろく", "なな", "はち", "きゅう"),
}
#: What "www", "2333" and "hhhh" are said as.
LAUGHTER: dict[str, str] = {"en": "haha", "zh": "哈哈哈", "ja": "わらわら"}
#: A few common emoji, named when ``emoji = "name"``. Others are dropped.
EMOJI_NAMES: dict[str, dict[str, str]] = {
    "en": {"👍": "thumbs up", "❤": "heart", "😂": "haha", "🤣": "haha", "🔥": "fire", "🎉": "congrats",
           "👏": "clap clap", "😭": "crying", "💀": "dead", "🙏": "thank you", "😍": "love it", "💯": "one hundred"},
    "zh": {"👍": "赞", "❤": "爱心", "😂": "哈哈", "🤣": "哈哈", "🔥": "火", "🎉": "恭喜",
           "👏": "鼓掌", "😭": "哭了", "💀": "笑死", "🙏": "谢谢", "😍": "爱了", "💯": "满分"},
    "ja": {"👍": "いいね", "❤": "ハート", "😂": "わら", "🤣": "わら", "🔥": "アツい", "🎉": "おめでとう",
           "👏": "パチパチ", "😭": "泣ける", "💀": "しぬ", "🙏": "ありがとう", "😍": "すき", "💯": "満点"},
}
#: Latin netspeak said as letters or as one word, per language (``en`` also serves the others).
_SPELLED: dict[str, str] = {"lmao": "L M A O", "lmfao": "L M F A O", "rofl": "rofl", "omg": "O M G", "gg": "G G", "ggwp": "G G W P"}

# Latin words end at anything but a Latin letter: "主播lol" holds the word "lol".
_LOL_RE = re.compile(r"(?<![A-Za-z])(?:l+o+)+l+(?![A-Za-z])", re.IGNORECASE)
_WORD_RE = re.compile(r"(?<![A-Za-z])[A-Za-z]+(?![A-Za-z])")
# Laughter spelled with letters or digits, alone (not inside a word, a URL or a number).
_WWW_RE = re.compile(r"(?<![A-Za-z0-9.])[wW]{3,}(?![A-Za-z0-9.])")
_WW_JA_RE = re.compile(r"(?<![A-Za-z0-9.])[wW]{2,}(?![A-Za-z0-9.])")
_HHH_RE = re.compile(r"(?<![A-Za-z0-9])[hH]{4,}(?![A-Za-z0-9])")
_2333_RE = re.compile(r"(?<![\d.,])233+(?![\d.,])")
_DIGIT_RUN_RE = re.compile(r"(?<![\d.,])(\d)\1{2,}(?![\d.,])")
_LATIN_RUN_RE = re.compile(r"([A-Za-z])\1{2,}")
_CJK_RUN_RE = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff])\1{3,}")
_UNIT_RUN_RE = re.compile(r"([^\W\d_]{2,4}?)\1{3,}")
_TOKEN_RE = re.compile(r"\S+")
# A token that looks like an address: left as typed.
_ADDRESS_RE = re.compile(r"[./:@][A-Za-z]")
_WORD_REPEAT_RE = re.compile(r"(?<!\S)(\S+)(?:\s+\1(?!\S)){3,}")
_DOTS_RE = re.compile(r"\.{3,}|。{2,}|…+")
_PUNCT_RUN_RE = re.compile(r"([!?！？~～,，、])[!?！？~～,，、]*")
_SPACES_RE = re.compile(r"[ \t]+")


def _is_emoji(ch: str) -> bool:
    return unicodedata.category(ch) == "So" and ord(ch) >= 0x2190


class NetspeakNormalizer:
    """``normalizer(text, lang) -> str``: a comment as viewers say it (see the module docstring).

    ``netspeak=False`` keeps only the emoji handling (G2P would drop emoji anyway). Languages other
    than ``en``/``zh``/``ja`` use the English table.
    """

    def __init__(
        self,
        *,
        netspeak: bool = True,
        emoji: Literal["drop", "name"] = "drop",
        emoji_names: Mapping[str, str] | None = None,
        replacements: Mapping[str, Mapping[str, str]] | None = None,
        max_repeat: int = 4,
    ) -> None:
        self.netspeak = netspeak
        self.emoji = emoji
        self.extra_emoji_names = dict(emoji_names or {})
        self.max_repeat = max(1, max_repeat)
        self._replacements = {
            lang: [(_replacement_re(word), said) for word, said in table.items() if word]
            for lang, table in (replacements or {}).items()
        }

    @classmethod
    def from_config(cls, config: DanmakuConfig) -> NetspeakNormalizer:
        return cls(
            netspeak=config.netspeak,
            emoji=config.emoji,
            emoji_names=config.emoji_names,
            replacements=config.replacements,
        )

    def __call__(self, text: str, lang: str = "en") -> str:
        lang = lang if lang in DIGIT_NAMES else "en"
        for pattern, said in self._replacements.get(lang, ()):
            text = pattern.sub(said, text)
        text = self._emoji(text, lang)
        if self.netspeak:
            text = self._netspeak(unicodedata.normalize("NFKC", text), lang)
        return _SPACES_RE.sub(" ", text).strip()

    def _emoji(self, text: str, lang: str) -> str:
        if text.isascii():
            return text
        names = {**EMOJI_NAMES.get(lang, {}), **self.extra_emoji_names} if self.emoji == "name" else {}
        out: list[str] = []
        previous = ""
        for ch in text:
            if ch == "\ufe0f" or (unicodedata.category(ch) == "Sk" and 0x1F3FB <= ord(ch) <= 0x1F3FF):
                continue  # variation selector, skin tone: part of the emoji before
            if not _is_emoji(ch):
                out.append(ch)
                previous = ""
                continue
            name = names.get(ch, "")
            if name and ch != previous:
                separator = " " if lang == "en" else ""
                out.append(f"{separator}{name}{separator}")
            previous = ch
        return "".join(out)

    def _netspeak(self, text: str, lang: str) -> str:
        laugh = LAUGHTER[lang]
        digits = DIGIT_NAMES[lang]
        separator = " " if lang == "en" else ""
        text = _LOL_RE.sub("lol", text)
        text = (_WW_JA_RE if lang == "ja" else _WWW_RE).sub(laugh, text)
        text = _HHH_RE.sub(laugh, text)
        text = _2333_RE.sub(laugh, text)

        def spell(m: re.Match[str]) -> str:
            said = separator.join([digits[int(m.group(1))]] * min(len(m.group()), self.max_repeat))
            return f" {said} " if lang == "en" else said

        text = _WORD_REPEAT_RE.sub(r"\1 \1 \1", text)
        text = _TOKEN_RE.sub(_collapse_letters, text)
        text = _CJK_RUN_RE.sub(r"\1\1\1", text)
        text = _UNIT_RUN_RE.sub(r"\1\1\1", text)
        text = _WORD_RE.sub(_spelled, text)
        text = _DIGIT_RUN_RE.sub(spell, text)
        text = _DOTS_RE.sub("…", text)
        text = _PUNCT_RUN_RE.sub(r"\1", text)
        # "six six six !" -> "six six six!"
        return re.sub(r" +(?=[,.!?…，。！？])", "", _SPACES_RE.sub(" ", text))


def _spelled(m: re.Match[str]) -> str:
    word = m.group().lower()
    return _SPELLED.get(word) or _SPELLED.get(re.sub(r"(.)\1+", r"\1", word)) or m.group()


def _collapse_letters(m: re.Match[str]) -> str:
    token = m.group()
    return token if _ADDRESS_RE.search(token) else _LATIN_RUN_RE.sub(r"\1\1", token)


def _replacement_re(word: str) -> re.Pattern[str]:
    escaped = re.escape(word)
    if word.isascii():
        return re.compile(rf"(?<![A-Za-z0-9]){escaped}(?![A-Za-z0-9])", re.IGNORECASE)
    return re.compile(escaped, re.IGNORECASE)
