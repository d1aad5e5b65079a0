from __future__ import annotations

import pytest

from gateway.errors import ProtocolError
from gateway.protocol import (
    FRAME_HEADER,
    CancelMessage,
    FlushMessage,
    FrameFlags,
    SessionUpdate,
    TextMessage,
    decode_audio_frame,
    encode_audio_frame,
    parse_client_message,
)


def test_audio_frame_header_is_16_bytes_little_endian_and_round_trips() -> None:
    data = encode_audio_frame(7, 3, 4800, FrameFlags.FIRST | FrameFlags.LAST, b"\x01\x02")
    assert FRAME_HEADER.size == 16
    assert data[:4] == (7).to_bytes(4, "little")
    assert data[4:8] == (3).to_bytes(4, "little")
    assert data[8:12] == (4800).to_bytes(4, "little")
    assert data[12:14] == (3).to_bytes(2, "little")
    header, payload = decode_audio_frame(data)
    assert (header.seq, header.context_index, header.sample_offset, header.flags, payload) == (7, 3, 4800, 3, b"\x01\x02")


def test_decoding_a_short_frame_raises() -> None:
    with pytest.raises(ValueError):
        decode_audio_frame(b"\x00" * 15)


def test_text_message_parses_with_optional_context_settings() -> None:
    msg = parse_client_message('{"type":"text","context_id":"c1","text":"Hi","voice":"v","speed":1.5,"priority":3,"ttl_ms":500}')
    assert msg == TextMessage(context_id="c1", text="Hi", voice="v", speed=1.5, priority=3, ttl_ms=500)


def test_flush_cancel_and_update_parse() -> None:
    assert parse_client_message('{"type":"flush","context_id":"a","final":true}') == FlushMessage("a", True)
    assert parse_client_message('{"type":"cancel"}') == CancelMessage(None)
    assert parse_client_message('{"type":"session.update","format":"ulaw","frame_ms":40}') == SessionUpdate(format="ulaw", frame_ms=40)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "bad_json"),
        ("[1,2]", "bad_json"),
        ('{"type":"dance"}', "unknown_type"),
        ('{"text":"no type"}', "unknown_type"),
        ('{"type":"text","context_id":"c","text":5}', "bad_field"),
        ('{"type":"text","text":"no context"}', "bad_field"),
        ('{"type":"text","context_id":"","text":"x"}', "bad_field"),
        ('{"type":"text","context_id":"c","text":"x","speed":"fast"}', "bad_field"),
        ('{"type":"text","context_id":"c","text":"x","speed":9}', "bad_field"),
        ('{"type":"text","context_id":"c","text":"x","speed":true}', "bad_field"),
        ('{"type":"session.update","sample_rate":96000}', "bad_field"),
        ('{"type":"session.update","format":"aac"}', "bad_field"),
        ('{"type":"flush","context_id":"c","final":"yes"}', "bad_field"),
        ('{"type":"text","context_id":"c","text":"x","ttl_ms":0}', "bad_field"),
    ],
)
def test_bad_messages_raise_protocol_errors_with_stable_codes(raw: str, code: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_message(raw)
    assert info.value.code == code
    assert str(info.value)


def test_a_field_error_names_the_context_it_belongs_to() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_message('{"type":"text","context_id":"c9","text":"x","speed":"fast"}')
    assert info.value.context_id == "c9"
