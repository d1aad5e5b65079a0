"""Danmaku policy: which comments of a live stream are said, merged or dropped, and when.

Pure (no I/O; time from an injected clock), the way ``gateway.session`` keeps protocol decisions
away from sockets. ``gateway.integrations.danmaku`` does the I/O (one voxgate session, one audio
stream); ``danmaku_live`` takes comments live and feeds the OBS overlay.

``DanmakuPolicy`` decides what is said and when:

- **priority**: paid messages (super chats, gifts) first, scaled by amount; then comments that mention
  the streamer (or that the platform marked ``kind: mention``); then ordinary chat. Within one level
  the comment closest to its deadline goes first.
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
  offers it (``session.created`` lists ``langs``); otherwise they are dropped as ``lang_unavailable``.
  Mostly-Latin lines with a Han name in them stay English: the server's G2P reads each run of script
  with its own language (``gateway.text.mixed``).
- **netspeak**: what is sent is the comment read as viewers say it (``danmaku_text``); the report and
  captions keep what they typed.

The knobs are ``gateway.config.DanmakuConfig`` (the ``[danmaku]`` section). Every comment ends in
exactly one place of the ``DanmakuReport``: spoken (as an utterance's lead or merged into it) or
dropped, with the reason and who dropped it (``local`` or ``server``).
"""

from __future__ import annotations

import collections
import difflib
import itertools
import logging
import re
import time
import unicodedata
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from gateway.config import DanmakuConfig
from gateway.integrations.danmaku_text import NetspeakNormalizer
from gateway.ratelimit import TokenBucket

__all__ = [
    "COMMENT_KINDS",
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
    "DEFAULT_TEMPLATES",
    "normalize_comment",
    "detect_lang",
]

logger = logging.getLogger("voxgate.integrations.danmaku")

#: ``mention``: the platform marked it as addressed to the streamer (a reply, an @): mention priority.
CommentKind = Literal["chat", "superchat", "gift", "mention"]
COMMENT_KINDS: tuple[str, ...] = ("chat", "superchat", "gift", "mention")
#: Kinds that are paid: exempt from rate limits, never merged, read with the viewer's name.
PAID_KINDS = frozenset({"superchat", "gift"})
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
        """Build from one JSON record (the schema of ``docs/danmaku.md``): ``user`` (or ``viewer``),
        ``text``, ``kind``, ``amount``, ``name``, ``id``, ``timestamp`` (or ``t``/``at``). Raises
        ``ValueError`` for a record that is not an object, has no user or an unknown kind."""
        if not isinstance(data, Mapping):
            raise ValueError("a comment must be a JSON object")
        kind = str(data.get("kind", "chat"))
        if kind not in COMMENT_KINDS:
            raise ValueError(f"unknown comment kind {kind!r}; one of {', '.join(COMMENT_KINDS)}")
        viewer = data.get("user", data.get("viewer"))
        if not viewer:
            raise ValueError("comment without user")
        return cls(
            viewer=str(viewer),
            text=str(data.get("text", "")),
            kind=kind,  # type: ignore[arg-type]
            amount=float(data.get("amount", 0.0)),
            name=str(data.get("name", "")),
            id=str(data.get("id", "")),
            at=float(data.get("t", data.get("at", data.get("timestamp", 0.0)))),
        )

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
    #: What is sent to the server: ``text`` read as viewers say it ("666" six six six).
    speech: str
    lang: str
    priority: int
    #: Stream time by which its audio must have started.
    deadline: float
    count: int
    kind: CommentKind
    comment_ids: tuple[str, ...]
    #: Who is read (the lead comment's display name or user) and what they typed: for captions.
    name: str = ""
    source_text: str = ""

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
    #: What was sent to the server (``text`` read as viewers say it).
    speech: str = ""

    @property
    def wait_s(self) -> float | None:
        """From its first comment's arrival to its audio's start (what a viewer waits)."""
        return None if self.start_s is None else max(0.0, self.start_s - self.first_at)


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

    @property
    def merged_dropped(self) -> list[dict[str, Any]]:
        """Groups of several comments that were merged and then dropped (never spoken), largest
        first: a "666" x50 that went stale in the queue."""
        groups: dict[str, list[DroppedEntry]] = {}
        for d in self.dropped:
            if d.group_id is not None:
                groups.setdefault(d.group_id, []).append(d)
        rows = [
            {"group_id": gid, "text": entries[0].text, "count": len(entries),
             "reason": entries[0].reason, "by": entries[0].by}
            for gid, entries in groups.items()
            if len(entries) > 1
        ]
        return sorted(rows, key=lambda r: -r["count"])

    def wait_percentiles(self) -> dict[str, float] | None:
        """p50/p95/max of ``SpokenEntry.wait_s`` (comment arrival to audio start), seconds."""
        waits = sorted(w for s in self.spoken if (w := s.wait_s) is not None)
        if not waits:
            return None

        def pick(q: float) -> float:
            return round(waits[min(len(waits) - 1, int(q * len(waits)))], 3)

        return {"p50": pick(0.50), "p95": pick(0.95), "max": round(waits[-1], 3), "n": len(waits)}

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
            "merged_dropped": self.merged_dropped,
            "wait_s": self.wait_percentiles(),
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
        lost = self.merged_dropped
        if lost:
            lines.append(
                "merged, then dropped (never spoken): "
                + ", ".join(f"{m['text']!r} x{m['count']} ({m['reason']}{'' if m['by'] == 'local' else ', server'})" for m in lost[:max_lines])
            )
        waits = self.wait_percentiles()
        if waits:
            lines.append(f"comment -> audio start: p50 {waits['p50']:.2f} s, p95 {waits['p95']:.2f} s, max {waits['max']:.2f} s")
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


# --- the policy -------------------------------------------------------------------------------


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
        return self.lead.kind not in PAID_KINDS


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
        self._buckets: dict[str, TokenBucket] = {}
        self._seq = itertools.count()
        self._mentions = tuple(_mention_form(n) for n in self.config.streamer_names if n.strip())
        self._as_said = NetspeakNormalizer.from_config(self.config)
        self.report = DanmakuReport()

    # --- input ----------------------------------------------------------------------------------

    def add(self, comment: Comment) -> Admission:
        """Admit one comment now. Returns what happened to it; drops are also in ``report``."""
        now = self._clock()
        self.report.num_comments += 1
        cfg = self.config
        paid = comment.kind in PAID_KINDS
        if not paid and not self._take_token(comment.viewer, now):
            return self._drop(comment, "rate_limited", now)
        # An emoji-only comment has an empty key, unless emoji are named ("👍" thumbs up).
        key = normalize_comment(comment.text) or normalize_comment(self._as_said(comment.text, "en"))
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
        elif comment.kind == "mention" or self._mentions and _mention_form(comment.text) and any(m in _mention_form(comment.text) for m in self._mentions):
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
            speech=self._spoken_text(group, as_said=True),
            lang=group.lang,
            priority=self._priority(group),
            deadline=group.deadline,
            count=len(group.members),
            kind=group.lead.kind,
            comment_ids=tuple(c.id for c in group.members),
            name=group.lead.name or group.lead.viewer,
            source_text=group.lead.text,
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
            speech=self._spoken_text(group, as_said=True),
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
            bucket = self._buckets[viewer] = TokenBucket(cfg.viewer_rate_per_s, now, burst=cfg.viewer_burst)
        return bucket.take(1.0, now)

    def _prune_buckets(self, now: float) -> None:
        cfg = self.config
        full_after = cfg.viewer_burst / cfg.viewer_rate_per_s
        self._buckets = {v: b for v, b in self._buckets.items() if now - b.stamp < full_after}

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
            logger.debug("dropped %r from %r: %s (%s)", comment.id, comment.viewer, reason, by)
        return Admission("dropped", group_id, reason)

    def _drop_group(self, group: _Group, reason: DropReason, by: Literal["local", "server"], now: float) -> None:
        group.state = "dropped"
        for comment in [*group.members, *group.late]:
            self._drop(comment, reason, now, by=by, group_id=group.id)
        logger.info("dropped utterance %s (%d comments): %s by %s", group.id, len(group.members) + len(group.late), reason, by)

    def _spoken_text(self, group: _Group, *, as_said: bool = False) -> str:
        """What the utterance says: as typed (captions, the report) or, with ``as_said``, with the
        comment read as viewers say it (``danmaku_text``: "666" six six six), which is sent."""
        cfg = self.config
        lead = group.lead
        text = _truncate(lead.text, cfg.max_chars)
        count = len(group.members)
        if count > 1 and lead.kind not in PAID_KINDS:
            # The form most viewers typed ("666" rather than the first one's "666666!!").
            forms = collections.Counter(" ".join(c.text.split()) for c in group.members)
            text = _truncate(max(forms, key=lambda form: (forms[form], -len(form))), cfg.max_chars)
        if as_said:
            text = self._as_said(text, group.lang)
        name = _truncate(lead.name or lead.viewer, 24)
        if lead.kind == "gift":
            template = _template(cfg.templates, "gift", group.lang)
            return template.format(name=name, text=text or "gift", count=1)
        if lead.kind == "superchat":
            template = _template(cfg.templates, "superchat", group.lang)
            return template.format(name=name, text=text, count=1) if text else name
        if count >= cfg.count_suffix_min:
            return _template(cfg.templates, "count", group.lang).format(text=text, count=count, name=name)
        return text


def _template(templates: Mapping[str, Mapping[str, str]], kind: str, lang: str) -> str:
    forms = templates.get(kind, DEFAULT_TEMPLATES[kind])
    return forms.get(lang) or forms.get("en") or DEFAULT_TEMPLATES[kind]["en"]


def _mention_form(text: str) -> str:
    # Lighter than the dedup key: a streamer called "Mimi" must not match every "mi".
    return "".join(unicodedata.normalize("NFKC", text).casefold().split())
