"""Danmaku responder: a live stream's comment bursts, read out in one voice, never late.

Two parts, kept apart the way ``gateway.session`` keeps protocol decisions away from sockets:

``DanmakuPolicy`` (pure: no I/O, time from an injected clock) decides what is said and when:

- **priority**: paid messages (super chats, gifts) first, scaled by amount; then comments that mention
  the streamer; then ordinary chat. Within one level the comment closest to its deadline goes first.
- **TTL**: every comment has a deadline (``ttl_*_s`` after it arrived, per class). A comment that cannot
  *start playing* before its deadline is dropped and reported, never spoken late. The policy drops what
  is already stale before sending; what it sends carries the rest of its TTL as the protocol's
  ``ttl_ms``, so the server drops it too if the engine cannot start it in time.
- **dedup / coalescing**: comments whose normalised text (``normalize_comment``: width, case,
  punctuation, repeated characters and syllables) is equal, or nearly equal for longer lines, merge
  into one group within ``dedup_window_s``; the group is spoken once ("666, times 50"). Duplicates that
  arrive while or after their group is spoken (inside the window) are counted, not spoken again.
- **per-viewer rate limit**: a token bucket per viewer (paid messages are exempt); over it, dropped.
- **bounded queue**: over ``max_queued`` groups, the least urgent one is dropped (``queue_full``).
- **language**: Han/kana lines are tagged ``zh``/``ja`` and spoken in that language when the server
  offers it (``session.created`` lists ``langs``); otherwise they are dropped as ``lang_unavailable``
  rather than read by the English G2P, which would skip every CJK character and say nothing useful.

``DanmakuResponder`` (asyncio) does the I/O: one ``VoxgateClient`` session, one utterance in flight at
a time, started only when the audio already queued for the stream is about to run out, so contexts are
spoken one after another into one PCM stream (an ``AudioSink``). ``StreamClock`` lets a recorded log be
replayed faster than real time (``examples/danmaku_replay.py``).

Every comment ends in exactly one place of the ``DanmakuReport``: spoken (as an utterance's lead or
merged into it) or dropped, with the reason and who dropped it (``local`` or ``server``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import difflib
import itertools
import logging
import re
import time
import unicodedata
import wave
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

__all__ = [
    "CommentKind",
    "DropReason",
    "Comment",
    "DanmakuConfig",
    "Admission",
    "Utterance",
    "SpokenEntry",
    "DroppedEntry",
    "DanmakuReport",
    "DanmakuPolicy",
    "normalize_comment",
    "detect_lang",
    "load_comments",
    "StreamClock",
    "AudioSink",
    "WavSink",
    "DanmakuResponder",
    "replay",
]

logger = logging.getLogger("voxgate.integrations.danmaku")

CommentKind = Literal["chat", "superchat", "gift"]
DropReason = Literal[
    "ttl_expired",  # could not start playing before its deadline
    "rate_limited",  # its viewer was over the per-viewer rate
    "queue_full",  # evicted as the least urgent when the queue was full
    "lang_unavailable",  # its language has no G2P on the server
    "empty",  # nothing speakable (only emoji or punctuation)
    "engine_failed",  # the server could not synthesize it
]

#: Spoken forms, per kind and language. ``{text}``, ``{name}``, ``{count}`` are filled in.
DEFAULT_TEMPLATES: dict[str, dict[str, str]] = {
    "count": {"en": "{text}, times {count}", "zh": "{text}，{count}次", "ja": "{text}、{count}回"},
    "superchat": {"en": "{name} says: {text}", "zh": "{name}说：{text}", "ja": "{name}さん：{text}"},
    "gift": {"en": "Thank you {name} for the {text}!", "zh": "谢谢{name}送的{text}！", "ja": "{name}さん、{text}ありがとう！"},
}


@dataclass(frozen=True, slots=True)
class Comment:
    """One viewer message as the platform delivered it.

    ``at`` is the log's timestamp (seconds from the start of the stream): metadata for replays and
    reports. The policy times a comment from when ``DanmakuPolicy.add`` sees it, by its own clock.
    """

    viewer: str
    text: str
    kind: CommentKind = "chat"
    #: Paid amount (super chat or gift value) in the platform's unit; raises priority.
    amount: float = 0.0
    #: Display name, spoken for paid messages; the viewer id when empty.
    name: str = ""
    id: str = ""
    at: float = 0.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Comment:
        """Build from a ``comments.jsonl`` record: ``t``/``at``, ``viewer``, ``text``, ``kind``, ``amount``,
        ``name``, ``id``. Raises ``ValueError`` for a record without a viewer or a known kind."""
        kind = str(data.get("kind", "chat"))
        if kind not in ("chat", "superchat", "gift"):
            raise ValueError(f"unknown comment kind {kind!r}")
        viewer = data.get("viewer")
        if not viewer:
            raise ValueError("comment without viewer")
        return cls(
            viewer=str(viewer),
            text=str(data.get("text", "")),
            kind=kind,  # type: ignore[arg-type]
            amount=float(data.get("amount", 0.0)),
            name=str(data.get("name", "")),
            id=str(data.get("id", "")),
            at=float(data.get("t", data.get("at", 0.0))),
        )


@dataclass(frozen=True, slots=True)
class DanmakuConfig:
    """Policy knobs. Times are seconds of stream time (the policy's clock)."""

    #: Names (and handles) of the streamer; a comment containing one is a mention.
    streamer_names: tuple[str, ...] = ()
    priority_chat: int = 0
    priority_mention: int = 4
    #: Paid messages start here and gain 1 per ``paid_amount_step`` up to ``priority_paid_max``.
    priority_paid: int = 7
    priority_paid_max: int = 10
    paid_amount_step: float = 30.0
    #: A group this large gains ``crowd_priority_bonus``: many viewers saying it makes it more relevant.
    crowd_min_count: int = 5
    crowd_priority_bonus: int = 1
    ttl_chat_s: float = 8.0
    ttl_mention_s: float = 20.0
    ttl_paid_s: float = 120.0
    #: Comments merge into a group for this long after the group's first comment.
    dedup_window_s: float = 20.0
    #: Near-duplicates: ``difflib`` ratio at or above this merges keys of ``min_fuzzy_chars`` or more
    #: (short keys only merge when equal: "ok" and "oh" are different comments). 0 disables.
    similarity: float = 0.85
    min_fuzzy_chars: int = 10
    #: Groups of at least this many comments are spoken with their count ("666, times 50").
    count_suffix_min: int = 3
    #: A group that got an echo less than ``settle_s`` ago is still growing: other comments go first
    #: (so the count said is the crowd's, not the first second's), for at most ``max_hold_s``.
    settle_s: float = 1.0
    max_hold_s: float = 4.0
    #: Per-viewer token bucket (paid messages are exempt). 0 disables.
    viewer_rate_per_s: float = 0.2
    viewer_burst: float = 2.0
    #: Queued groups beyond this evict the least urgent.
    max_queued: int = 50
    #: Longer comments are cut (at a space or punctuation when there is one) to keep turns short.
    max_chars: int = 80
    #: The engine must start an utterance at least this long before its deadline (first audio latency).
    start_margin_s: float = 0.3
    templates: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: DEFAULT_TEMPLATES)


@dataclass(frozen=True, slots=True)
class Admission:
    """What ``DanmakuPolicy.add`` did with a comment: ``queued`` (new group), ``merged`` (into
    ``group_id``, queued or already spoken) or ``dropped`` (``reason``)."""

    outcome: Literal["queued", "merged", "dropped"]
    group_id: str | None = None
    reason: DropReason | None = None


@dataclass(frozen=True, slots=True)
class Utterance:
    """One thing to say, chosen by ``DanmakuPolicy.next_utterance``.

    Send it as one context (``context_id=id``, ``priority``, ``lang``, ``ttl_ms=ttl_ms(now)``), then
    report back with ``mark_spoken(id, ...)`` or ``mark_dropped(id, reason)``.
    """

    id: str
    text: str
    lang: str
    priority: int
    #: Stream time by which its audio must have started.
    deadline: float
    count: int
    kind: CommentKind
    comment_ids: tuple[str, ...]

    def ttl_ms(self, now: float, *, margin_s: float = 0.0, time_scale: float = 1.0) -> int:
        """The protocol ``ttl_ms`` for sending at ``now``: what is left before the deadline, less the
        margin, in wall-clock ms (stream seconds / ``time_scale``). At least 1."""
        return max(1, int((self.deadline - margin_s - now) * 1000.0 / time_scale))


@dataclass(slots=True)
class SpokenEntry:
    utterance_id: str
    text: str
    lang: str
    priority: int
    kind: CommentKind
    #: Comments merged before it was sent (the lead included).
    count: int
    #: Duplicates that arrived while or after it was spoken, inside the dedup window.
    late_duplicates: int
    comment_ids: list[str]
    first_at: float
    sent_at: float
    #: Stream time its audio starts in the output, and its length; set by the responder.
    start_s: float | None = None
    audio_ms: float | None = None


@dataclass(frozen=True, slots=True)
class DroppedEntry:
    comment_id: str
    viewer: str
    text: str
    reason: DropReason
    by: Literal["local", "server"]
    at: float
    #: The group it had merged into, if any.
    group_id: str | None = None


@dataclass(slots=True)
class DanmakuReport:
    """What happened to every comment. ``to_dict()`` for JSON, ``summary()`` for people."""

    num_comments: int = 0
    spoken: list[SpokenEntry] = field(default_factory=list)
    dropped: list[DroppedEntry] = field(default_factory=list)

    @property
    def merged(self) -> list[dict[str, Any]]:
        """Spoken utterances that stood for more than one comment, largest first."""
        rows = [
            {"utterance_id": s.utterance_id, "text": s.text, "count": s.count + s.late_duplicates,
             "before_speaking": s.count, "late": s.late_duplicates}
            for s in self.spoken
            if s.count + s.late_duplicates > 1
        ]
        return sorted(rows, key=lambda r: -r["count"])

    def dropped_by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for d in self.dropped:
            key = f"{d.reason}" if d.by == "local" else f"{d.reason} (server)"
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    @property
    def num_spoken_comments(self) -> int:
        return sum(s.count + s.late_duplicates for s in self.spoken)

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_comments": self.num_comments,
            "num_utterances": len(self.spoken),
            "num_comments_spoken": self.num_spoken_comments,
            "num_dropped": len(self.dropped),
            "dropped_by_reason": self.dropped_by_reason(),
            "spoken": [asdict(s) for s in self.spoken],
            "merged": self.merged,
            "dropped": [asdict(d) for d in self.dropped],
        }

    def summary(self, *, max_lines: int = 12) -> str:
        lines = [
            f"{self.num_comments} comments: {len(self.spoken)} utterances spoken for "
            f"{self.num_spoken_comments} comments, {len(self.dropped)} dropped",
        ]
        if self.dropped:
            lines.append("dropped: " + ", ".join(f"{k} {v}" for k, v in self.dropped_by_reason().items()))
        merged = self.merged
        if merged:
            lines.append("merged: " + ", ".join(f"{m['text']!r} x{m['count']}" for m in merged[:max_lines]))
        lines.append("spoken:")
        for s in self.spoken[:max_lines]:
            at = "" if s.start_s is None else f"{s.start_s:7.2f}s "
            lines.append(f"  {at}[p{s.priority:+d} {s.lang}] {s.text}")
        if len(self.spoken) > max_lines:
            lines.append(f"  ... {len(self.spoken) - max_lines} more")
        return "\n".join(lines)


# --- text helpers -----------------------------------------------------------------------------

# Two or more of one character ("loool", "666666", "哈哈哈"); then a repeated 2-4 character unit
# ("hahaha", "lolol", "2333"). Both collapse to one copy.
_RUN_RE = re.compile(r"(.)\1+")
_UNIT_RE = re.compile(r"(.{2,4}?)\1+")


def normalize_comment(text: str) -> str:
    """The dedup key of a comment: NFKC (full width to half width), case-folded, letters and digits
    only, runs of one character and repeated short units collapsed.

    "LOL", "lol!!", "ｌｏｌ", "loool" and "lolol" all give "lol"; "666" and "6666666" give "6";
    "哈哈哈哈" gives "哈". Only for comparing: the spoken text is the original comment. Emoji-only and
    punctuation-only comments give "" (nothing to say).
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(ch for ch in folded if unicodedata.category(ch)[0] in "LN")
    return _UNIT_RE.sub(r"\1", _RUN_RE.sub(r"\1", kept))


def _is_han(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" or "\uf900" <= ch <= "\ufaff"


def _is_kana(ch: str) -> bool:
    return "\u3040" <= ch <= "\u30ff" or "\u31f0" <= ch <= "\u31ff" or "\uff66" <= ch <= "\uff9d"


def detect_lang(text: str) -> str:
    """``ja`` when the line has kana; ``zh`` when Han characters outweigh Latin letters (one Han
    character counts as three letters); else ``en``. Digits and symbols do not vote."""
    han = latin = 0
    for ch in unicodedata.normalize("NFKC", text):
        if _is_kana(ch):
            return "ja"
        if _is_han(ch):
            han += 1
        elif ch.isascii() and ch.isalpha():
            latin += 1
    return "zh" if han and 3 * han >= latin else "en"


def _truncate(text: str, max_chars: int) -> str:
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    # Cut at the last space or punctuation in the second half, so a word is not cut in two.
    for i in range(len(head) - 1, max_chars // 2, -1):
        if head[i].isspace() or unicodedata.category(head[i]).startswith("P"):
            return head[: i + 1].rstrip()
    return head


def load_comments(path: str | Path) -> list[Comment]:
    """Read a JSON-lines comment log (see ``examples/comments.jsonl``), in timestamp order. Blank
    lines and lines starting with ``//`` are skipped."""
    import orjson

    comments: list[Comment] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("//"):
                continue
            try:
                comment = Comment.from_dict(orjson.loads(line))
            except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: {exc}") from None
            comments.append(comment if comment.id else _with_id(comment, f"c{number}"))
    comments.sort(key=lambda c: c.at)
    return comments


def _with_id(comment: Comment, comment_id: str) -> Comment:
    from dataclasses import replace

    return replace(comment, id=comment_id)


# --- the policy -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


@dataclass(eq=False, slots=True)
class _Group:
    """Comments that will be spoken as one utterance."""

    id: str
    seq: int
    key: str
    lang: str
    base_priority: int
    lead: Comment
    members: list[Comment]
    first_at: float
    #: When its latest comment merged in.
    last_at: float
    deadline: float
    ttl_s: float
    state: Literal["queued", "speaking", "spoken", "dropped"] = "queued"
    late: list[Comment] = field(default_factory=list)
    entry: SpokenEntry | None = None
    sent_at: float = 0.0

    @property
    def mergeable(self) -> bool:
        return self.lead.kind == "chat"


class DanmakuPolicy:
    """Decides which comments are spoken, merged or dropped, and in what order.

    Responsibilities: priority, TTL, dedup/coalescing, per-viewer rate limits, bounded queue, the
    spoken form of each utterance, the report. Not its job: sockets, audio, sleeping. Time comes from
    ``clock`` (seconds of stream time), so tests drive it with a fake clock.

    Use: ``add(comment)`` as comments arrive; when the stream is about to need audio, ``u =
    next_utterance(start_at=...)``, speak it, then ``mark_spoken(u.id, ...)`` or ``mark_dropped(u.id,
    reason)``. ``expire()`` drops stale comments without picking one (call it while busy so drops are
    reported on time); ``report`` holds the outcome of every comment so far.
    """

    def __init__(
        self,
        config: DanmakuConfig | None = None,
        *,
        langs: Collection[str] = ("en",),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config or DanmakuConfig()
        self.langs = frozenset(langs)
        self._clock = clock
        self._queued: list[_Group] = []
        #: Groups sent or spoken whose dedup window is still open, by id.
        self._recent: dict[str, _Group] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._seq = itertools.count()
        self._mentions = tuple(_mention_form(n) for n in self.config.streamer_names if n.strip())
        self.report = DanmakuReport()

    # --- input ----------------------------------------------------------------------------------

    def add(self, comment: Comment) -> Admission:
        """Admit one comment now. Returns what happened to it; drops are also in ``report``."""
        now = self._clock()
        self.report.num_comments += 1
        cfg = self.config
        paid = comment.kind != "chat"
        if not paid and not self._take_token(comment.viewer, now):
            return self._drop(comment, "rate_limited", now)
        key = normalize_comment(comment.text)
        if not key and not paid:
            return self._drop(comment, "empty", now)
        lang = detect_lang(comment.text) if key else "en"
        if lang not in self.langs:
            return self._drop(comment, "lang_unavailable", now)
        if not paid:
            group = self._find_group(key, lang, now)
            if group is not None:
                return self._merge(group, comment, now)
        if paid:
            priority = min(cfg.priority_paid_max, cfg.priority_paid + int(comment.amount // max(cfg.paid_amount_step, 1e-9)))
            ttl = cfg.ttl_paid_s
        elif self._mentions and _mention_form(comment.text) and any(m in _mention_form(comment.text) for m in self._mentions):
            priority, ttl = cfg.priority_mention, cfg.ttl_mention_s
        else:
            priority, ttl = cfg.priority_chat, cfg.ttl_chat_s
        seq = next(self._seq)
        group = _Group(
            id=f"dm-{seq}",
            seq=seq,
            key=key,
            lang=lang,
            base_priority=max(-10, min(10, priority)),
            lead=comment,
            members=[comment],
            first_at=now,
            last_at=now,
            deadline=now + ttl,
            ttl_s=ttl,
        )
        if len(self._queued) >= cfg.max_queued:
            victim = min(self._queued, key=self._urgency)
            if self._urgency(victim) > self._urgency(group):
                return self._drop(comment, "queue_full", now)
            self._queued.remove(victim)
            self._drop_group(victim, "queue_full", "local", now)
        self._queued.append(group)
        return Admission("queued", group.id)

    # --- output ---------------------------------------------------------------------------------

    def next_utterance(self, *, start_at: float | None = None) -> Utterance | None:
        """The most urgent group as an utterance, or None when nothing is ready (``next_ready_at``).

        ``start_at`` is when its audio would start playing (the end of the audio already queued for
        the stream; default now). Groups that could not start before their deadline (less
        ``start_margin_s``) are dropped first, as ``ttl_expired``.
        """
        now = self._clock()
        start = now if start_at is None else max(now, start_at)
        self._expire_queued(start, now)
        # A group the crowd is still adding to waits (up to max_hold_s), even if nothing else is
        # ready: a moment of quiet beats announcing "666, times 7" in the middle of fifty.
        ready = [g for g in self._queued if not self._growing(g, now)]
        if not ready:
            return None
        group = max(ready, key=self._urgency)
        self._queued.remove(group)
        group.state = "speaking"
        group.sent_at = now
        self._recent[group.id] = group
        return Utterance(
            id=group.id,
            text=self._spoken_text(group),
            lang=group.lang,
            priority=self._priority(group),
            deadline=group.deadline,
            count=len(group.members),
            kind=group.lead.kind,
            comment_ids=tuple(c.id for c in group.members),
        )

    def mark_spoken(self, utterance_id: str, *, start_s: float | None = None, audio_ms: float | None = None) -> SpokenEntry:
        """The utterance was spoken; its comments (and duplicates still arriving) count as spoken."""
        group = self._sent_group(utterance_id)
        group.state = "spoken"
        entry = SpokenEntry(
            utterance_id=group.id,
            text=self._spoken_text(group),
            lang=group.lang,
            priority=self._priority(group),
            kind=group.lead.kind,
            count=len(group.members),
            late_duplicates=len(group.late),
            comment_ids=[c.id for c in group.members],
            first_at=round(group.first_at, 3),
            sent_at=round(group.sent_at, 3),
            start_s=start_s,
            audio_ms=audio_ms,
        )
        group.entry = entry
        self.report.spoken.append(entry)
        return entry

    def mark_dropped(
        self, utterance_id: str, reason: DropReason = "ttl_expired", *, by: Literal["local", "server"] = "server"
    ) -> None:
        """The server dropped the utterance (``context.dropped``) or it failed: its comments, and
        duplicates merged into it meanwhile, are reported dropped. Later duplicates form a new group."""
        group = self._sent_group(utterance_id)
        self._recent.pop(group.id, None)
        self._drop_group(group, reason, by, self._clock())

    def expire(self) -> int:
        """Drop queued comments that can no longer start in time, and forget closed dedup windows.
        Returns how many groups were dropped."""
        now = self._clock()
        return self._expire_queued(now, now)

    def next_deadline(self) -> float | None:
        """When ``expire()`` would next drop something (for a timer), or None."""
        if not self._queued:
            return None
        return min(g.deadline for g in self._queued) - self.config.start_margin_s

    def next_ready_at(self) -> float | None:
        """When a queued group will be ready for ``next_utterance`` (now, if one is; later, if all
        are still growing), or None when nothing is queued. For the caller's timer."""
        if not self._queued:
            return None
        cfg = self.config
        now = self._clock()
        return min(
            min(g.last_at + cfg.settle_s, g.first_at + cfg.max_hold_s) if self._growing(g, now) else now
            for g in self._queued
        )

    @property
    def num_queued(self) -> int:
        return len(self._queued)

    @property
    def num_in_flight(self) -> int:
        return sum(1 for g in self._recent.values() if g.state == "speaking")

    def take_report(self) -> DanmakuReport:
        """The report so far; a fresh one starts (for long streams, to keep memory bounded)."""
        report, self.report = self.report, DanmakuReport()
        return report

    # --- internals ------------------------------------------------------------------------------

    def _urgency(self, group: _Group) -> tuple[int, float, int]:
        # Higher priority first; within a level the earliest deadline, then arrival order.
        return (self._priority(group), -group.deadline, -group.seq)

    def _growing(self, group: _Group, now: float) -> bool:
        cfg = self.config
        return len(group.members) > 1 and now < min(group.last_at + cfg.settle_s, group.first_at + cfg.max_hold_s)

    def _priority(self, group: _Group) -> int:
        cfg = self.config
        bonus = cfg.crowd_priority_bonus if group.mergeable and len(group.members) >= cfg.crowd_min_count else 0
        return max(-10, min(10, group.base_priority + bonus))

    def _take_token(self, viewer: str, now: float) -> bool:
        cfg = self.config
        if cfg.viewer_rate_per_s <= 0:
            return True
        bucket = self._buckets.get(viewer)
        if bucket is None:
            if len(self._buckets) > 10_000:
                self._prune_buckets(now)
            bucket = self._buckets[viewer] = _Bucket(cfg.viewer_burst, now)
        bucket.tokens = min(cfg.viewer_burst, bucket.tokens + (now - bucket.updated) * cfg.viewer_rate_per_s)
        bucket.updated = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _prune_buckets(self, now: float) -> None:
        cfg = self.config
        full_after = cfg.viewer_burst / cfg.viewer_rate_per_s
        self._buckets = {v: b for v, b in self._buckets.items() if now - b.updated < full_after}

    def _find_group(self, key: str, lang: str, now: float) -> _Group | None:
        cfg = self.config
        self._forget_closed_windows(now)
        candidates = [g for g in itertools.chain(self._queued, self._recent.values()) if g.mergeable and g.lang == lang]
        for group in candidates:
            if group.key == key and now - group.first_at <= cfg.dedup_window_s:
                return group
        if cfg.similarity <= 0 or len(key) < cfg.min_fuzzy_chars:
            return None
        best: tuple[float, _Group] | None = None
        for group in candidates:
            if len(group.key) < cfg.min_fuzzy_chars or now - group.first_at > cfg.dedup_window_s:
                continue
            matcher = difflib.SequenceMatcher(None, key, group.key, autojunk=False)
            if matcher.real_quick_ratio() < cfg.similarity or matcher.quick_ratio() < cfg.similarity:
                continue
            ratio = matcher.ratio()
            if ratio >= cfg.similarity and (best is None or ratio > best[0]):
                best = (ratio, group)
        return None if best is None else best[1]

    def _merge(self, group: _Group, comment: Comment, now: float) -> Admission:
        if group.state == "queued":
            group.members.append(comment)
            group.last_at = now
            # The crowd is still saying it: it stays relevant for a full TTL after its latest echo.
            group.deadline = max(group.deadline, now + group.ttl_s)
        else:
            group.late.append(comment)
            if group.entry is not None:
                group.entry.late_duplicates = len(group.late)
        return Admission("merged", group.id)

    def _forget_closed_windows(self, now: float) -> None:
        window = self.config.dedup_window_s
        for gid in [gid for gid, g in self._recent.items() if g.state == "spoken" and now - g.first_at > window]:
            del self._recent[gid]

    def _expire_queued(self, start: float, now: float) -> int:
        self._forget_closed_windows(now)
        margin = self.config.start_margin_s
        stale = [g for g in self._queued if g.deadline - margin < start]
        for group in stale:
            self._queued.remove(group)
            self._drop_group(group, "ttl_expired", "local", now)
        return len(stale)

    def _sent_group(self, utterance_id: str) -> _Group:
        group = self._recent.get(utterance_id)
        if group is None or group.state != "speaking":
            raise KeyError(f"no utterance {utterance_id!r} in flight")
        return group

    def _drop(
        self,
        comment: Comment,
        reason: DropReason,
        now: float,
        *,
        by: Literal["local", "server"] = "local",
        group_id: str | None = None,
    ) -> Admission:
        self.report.dropped.append(
            DroppedEntry(comment.id, comment.viewer, comment.text, reason, by, round(now, 3), group_id)
        )
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("dropped %s from %s: %s (%s)", comment.id, comment.viewer, reason, by)
        return Admission("dropped", group_id, reason)

    def _drop_group(self, group: _Group, reason: DropReason, by: Literal["local", "server"], now: float) -> None:
        group.state = "dropped"
        for comment in [*group.members, *group.late]:
            self._drop(comment, reason, now, by=by, group_id=group.id)
        logger.info("dropped utterance %s (%d comments): %s by %s", group.id, len(group.members) + len(group.late), reason, by)

    def _spoken_text(self, group: _Group) -> str:
        cfg = self.config
        lead = group.lead
        text = _truncate(lead.text, cfg.max_chars)
        name = _truncate(lead.name or lead.viewer, 24)
        if lead.kind == "gift":
            template = _template(cfg.templates, "gift", group.lang)
            return template.format(name=name, text=text or "gift", count=1)
        if lead.kind == "superchat":
            template = _template(cfg.templates, "superchat", group.lang)
            return template.format(name=name, text=text, count=1) if text else name
        count = len(group.members)
        if count > 1:
            # The form most viewers typed ("666" rather than the first one's "666666!!").
            forms = collections.Counter(" ".join(c.text.split()) for c in group.members)
            text = _truncate(max(forms, key=lambda form: (forms[form], -len(form))), cfg.max_chars)
        if count >= cfg.count_suffix_min:
            return _template(cfg.templates, "count", group.lang).format(text=text, count=count, name=name)
        return text


def _template(templates: Mapping[str, Mapping[str, str]], kind: str, lang: str) -> str:
    forms = templates.get(kind, DEFAULT_TEMPLATES[kind])
    return forms.get(lang) or forms.get("en") or DEFAULT_TEMPLATES[kind]["en"]


def _mention_form(text: str) -> str:
    # Lighter than the dedup key: a streamer called "Mimi" must not match every "mi".
    return "".join(unicodedata.normalize("NFKC", text).casefold().split())


# --- I/O: one audio stream --------------------------------------------------------------------


class StreamClock:
    """Stream time: seconds since the clock was made, running ``time_scale`` times faster than the
    event loop's clock (1.0 live; 4.0 replays a log four times faster, audio included)."""

    def __init__(self, time_scale: float = 1.0, *, wall: Callable[[], float] = time.monotonic) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.time_scale = time_scale
        self._wall = wall
        self._t0 = wall()

    def __call__(self) -> float:
        return (self._wall() - self._t0) * self.time_scale

    def wall_seconds(self, stream_seconds: float) -> float:
        """How long to sleep for ``stream_seconds`` of stream time."""
        return max(0.0, stream_seconds / self.time_scale)


class AudioSink(Protocol):
    """Where the streamer's audio goes: ``write`` gets each chunk with the stream time it plays at
    (chunks of one utterance are contiguous; utterances never overlap)."""

    def write(self, samples: np.ndarray, sample_rate: int, start_s: float) -> None: ...


class WavSink:
    """Collects the stream's audio on a timeline and writes one 16-bit mono WAV on ``close()``:
    silence where nobody was spoken to, so the file sounds like the stream did."""

    def __init__(self, path: str | Path, *, keep_gaps: bool = True) -> None:
        self.path = Path(path)
        self.keep_gaps = keep_gaps
        self.sample_rate: int | None = None
        self._parts: list[tuple[int, np.ndarray]] = []
        self._end = 0

    def write(self, samples: np.ndarray, sample_rate: int, start_s: float) -> None:
        if self.sample_rate is None:
            self.sample_rate = sample_rate
        elif sample_rate != self.sample_rate:
            raise ValueError(f"sample rate changed from {self.sample_rate} to {sample_rate}")
        start = max(self._end, round(start_s * sample_rate)) if self.keep_gaps else self._end
        self._parts.append((start, np.asarray(samples, dtype=np.float32)))
        self._end = start + len(samples)

    @property
    def duration_s(self) -> float:
        return 0.0 if not self.sample_rate else self._end / self.sample_rate

    def close(self) -> Path:
        """Write the file (24 kHz unless the session asked for another rate); returns its path."""
        rate = self.sample_rate or 24_000
        audio = np.zeros(self._end, dtype=np.float32)
        for start, samples in self._parts:
            audio[start : start + len(samples)] = samples
        pcm = np.clip(np.round(audio * 32_767.0), -32_768, 32_767).astype("<i2")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with wave.open(str(self.path), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(rate)
            wav.writeframes(pcm.tobytes())
        return self.path


class DanmakuResponder:
    """Speaks the policy's choices into one audio stream through one voxgate session.

    Responsibilities: ask the policy for the next utterance when the stream is about to run out of
    audio (``lookahead_s`` before the end of what is queued), send it as one context with its
    priority, language and remaining TTL, place its audio right after the previous utterance's in
    the sink, and tell the policy how it went. One utterance is in flight at a time, so contexts
    never interleave. Not its job: choosing (``DanmakuPolicy``), connecting (pass a connected
    ``VoxgateClient``).

    Use: ``task = asyncio.create_task(responder.run())``; ``responder.submit(comment)`` as comments
    arrive; ``await responder.drain()`` to let the queue empty; ``await responder.close()``.
    """

    def __init__(
        self,
        client: Any,
        policy: DanmakuPolicy,
        sink: AudioSink,
        *,
        clock: StreamClock | None = None,
        lookahead_s: float = 1.0,
        max_late_s: float = 0.5,
        voice: str | None = None,
        speed: float | None = None,
    ) -> None:
        self.client = client
        self.policy = policy
        self.sink = sink
        self.clock = clock or StreamClock()
        self.lookahead_s = lookahead_s
        #: Audio whose first chunk arrives this long after its deadline is cancelled, not played.
        self.max_late_s = max_late_s
        self.voice = voice
        self.speed = speed
        #: Stream time when the audio written so far ends.
        self.playback_end = 0.0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._in_flight: asyncio.Task[None] | None = None

    def submit(self, comment: Comment) -> Admission:
        """Hand over one comment now (its TTL starts now). Returns the policy's decision."""
        admission = self.policy.add(comment)
        if admission.outcome == "queued":
            self._idle.clear()
        self._wake.set()
        return admission

    async def drain(self) -> None:
        """Wait until every queued comment is spoken or dropped and its audio is in the sink."""
        await self._idle.wait()

    async def close(self) -> None:
        """Stop after the utterance in flight; queued comments stay in the policy (not reported)."""
        self._closing = True
        self._wake.set()
        if self._in_flight is not None:
            with contextlib.suppress(Exception):
                await self._in_flight

    async def run(self) -> None:
        """The loop; returns after ``close()``. Run it as a task."""
        while not self._closing:
            now = self.clock()
            if self._in_flight is None and self.playback_end - now <= self.lookahead_s:
                utterance = self.policy.next_utterance(start_at=max(now, self.playback_end))
                if utterance is not None:
                    self._in_flight = asyncio.create_task(self._speak(utterance), name=f"danmaku-{utterance.id}")
                    self._in_flight.add_done_callback(self._on_spoken)
                    continue
            else:
                # Busy: still report what goes stale meanwhile, when it goes stale.
                self.policy.expire()
            if self._in_flight is None and self.policy.num_queued == 0:
                self._idle.set()
            await self._sleep(now)

    async def _sleep(self, now: float) -> None:
        waits: list[float] = []
        if self._in_flight is None and self.policy.num_queued:
            waits.append(self.playback_end - self.lookahead_s - now)
            ready_at = self.policy.next_ready_at()
            if ready_at is not None:
                waits.append(ready_at - now)
        deadline = self.policy.next_deadline()
        if deadline is not None:
            waits.append(deadline - now)
        timeout = None if not waits else self.clock.wall_seconds(min(waits)) + 0.001
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    def _on_spoken(self, task: asyncio.Task[None]) -> None:
        self._in_flight = None
        if not task.cancelled() and task.exception() is not None:
            logger.error("speaking an utterance failed", exc_info=task.exception())
        self._wake.set()

    async def _speak(self, utterance: Utterance) -> None:
        from gateway.client import VoxgateClientError

        clock = self.clock
        sent_at = clock()
        ttl_ms = utterance.ttl_ms(sent_at, margin_s=self.policy.config.start_margin_s, time_scale=clock.time_scale)
        speech = self.client.speak(
            utterance.text,
            context_id=utterance.id,
            voice=self.voice,
            speed=self.speed,
            lang=utterance.lang,
            priority=utterance.priority,
            ttl_ms=ttl_ms,
        )
        start_s: float | None = None
        num_samples = 0
        sample_rate = 24_000
        try:
            async for chunk in speech:
                if start_s is None:
                    start_s = max(clock(), self.playback_end)
                    if start_s > utterance.deadline + self.max_late_s:
                        # The engine started in time but the audio came too late to be relevant.
                        await speech.cancel()
                        self.policy.mark_dropped(utterance.id, "ttl_expired", by="local")
                        return
                sample_rate = chunk.sample_rate
                self.sink.write(chunk.samples, sample_rate, start_s + num_samples / sample_rate)
                num_samples += len(chunk.samples)
                self.playback_end = start_s + num_samples / sample_rate
        except VoxgateClientError as exc:
            logger.warning("utterance %s failed: %s", utterance.id, exc.code)
            if start_s is None:
                self.policy.mark_dropped(utterance.id, "engine_failed", by="server")
                return
        if start_s is None:
            reason: DropReason = "ttl_expired" if speech.dropped or speech.done is not None else "engine_failed"
            self.policy.mark_dropped(utterance.id, reason, by="server")
            return
        self.policy.mark_spoken(utterance.id, start_s=round(start_s, 3), audio_ms=round(num_samples * 1000.0 / sample_rate, 1))


async def replay(
    comments: Iterable[Comment],
    client: Any,
    sink: AudioSink,
    *,
    config: DanmakuConfig | None = None,
    time_scale: float = 1.0,
    lookahead_s: float = 1.0,
    voice: str | None = None,
) -> DanmakuReport:
    """Replay a comment log against a connected ``VoxgateClient``: each comment is submitted at its
    timestamp (``time_scale`` times faster), then the queue drains. Returns the report; call
    ``sink.close()`` afterwards to write the audio."""
    comments = sorted(comments, key=lambda c: c.at)
    clock = StreamClock(time_scale)
    langs = [lang for lang in client.langs if lang in ("en", "zh", "ja")] or ["en"]
    policy = DanmakuPolicy(config, langs=langs, clock=clock)
    responder = DanmakuResponder(client, policy, sink, clock=clock, lookahead_s=lookahead_s, voice=voice)
    runner = asyncio.create_task(responder.run(), name="danmaku-responder")
    t0 = comments[0].at if comments else 0.0
    try:
        for comment in comments:
            delay = clock.wall_seconds(comment.at - t0 - clock())
            if delay > 0:
                await asyncio.sleep(delay)
            responder.submit(comment)
        await responder.drain()
    finally:
        await responder.close()
        await runner
    logger.info("replay done: %s", policy.report.summary().splitlines()[0])
    return policy.report
