# voxgate NPC client for Godot 3.2+: talks to the NPC bridge over a local WebSocket
# (python -m gateway.integrations.npc --url ws://VOXGATE --listen 127.0.0.1:8790), because Godot 3
# cannot pipe to a child process. Commands and events are those of docs/npc.md, one JSON object per
# WebSocket message.
#
# Use: add this script to a Node, set `player` to an AudioStreamPlayer whose stream is an
# AudioStreamGenerator (mix_rate = the bridge's --sample-rate), call connect_to_bridge(url), then
# say(), interrupt(), configure(). Connect to the signals to animate the face: `viseme` gives the OVR
# index and its time from the start of the line's audio.
extends Node

signal bridge_ready(info)                                  # the bridge's "ready" event
signal started(npc, line_id, sample_rate)
signal viseme(npc, line_id, index, start_ms, end_ms)
signal word(npc, line_id, text, start_ms, end_ms)
signal audio(npc, line_id, frames)                         # PoolVector2Array, stereo frames in [-1, 1]
signal done(npc, line_id, audio_ms)
signal interrupted(npc, line_id, at_ms, at_sample)
signal failed(npc, line_id, code, message)                 # an "error" event
signal event_received(event)                               # every event, as a Dictionary
signal bridge_closed()

export(NodePath) var player_path                           # AudioStreamPlayer + AudioStreamGenerator

var _ws := WebSocketClient.new()
var _playback = null                                       # AudioStreamGeneratorPlayback
var _open := false


func _ready() -> void:
	if player_path:
		var player = get_node(player_path)
		player.play()
		_playback = player.get_stream_playback()


func connect_to_bridge(url: String) -> int:
	_ws.connect("connection_established", self, "_on_open")
	_ws.connect("connection_closed", self, "_on_closed")
	_ws.connect("connection_error", self, "_on_closed", [false])
	_ws.connect("data_received", self, "_on_data")
	return _ws.connect_to_url(url)


func say(npc: String, line: String, line_id: String = "") -> void:
	var command := {"cmd": "say", "npc": npc, "line": line}
	if line_id != "":
		command["id"] = line_id
	send(command)


func interrupt(npc: String) -> void:
	send({"cmd": "interrupt", "npc": npc})


func configure(npc: String, voice: String = "", speed: float = 0.0) -> void:
	var command := {"cmd": "configure", "npc": npc}
	if voice != "":
		command["voice"] = voice
	if speed > 0.0:
		command["speed"] = speed
	send(command)


func quit_bridge() -> void:
	send({"cmd": "quit"})


func send(command: Dictionary) -> void:
	_ws.get_peer(1).put_packet(to_json(command).to_utf8())


func is_open() -> bool:
	return _open


func poll() -> void:
	_ws.poll()


func _process(_delta: float) -> void:
	poll()


func _on_open(_protocol: String) -> void:
	_ws.get_peer(1).set_write_mode(WebSocketPeer.WRITE_MODE_TEXT)
	_open = true


func _on_closed(_clean: bool) -> void:
	_open = false
	emit_signal("bridge_closed")


func _on_data() -> void:
	var parsed = JSON.parse(_ws.get_peer(1).get_packet().get_string_from_utf8())
	if parsed.error != OK or typeof(parsed.result) != TYPE_DICTIONARY:
		push_warning("voxgate: not a JSON object from the bridge")
		return
	var e: Dictionary = parsed.result
	emit_signal("event_received", e)
	var npc = e.get("npc", "")
	var line_id = e.get("line_id", "")
	match e["event"]:
		"ready":
			emit_signal("bridge_ready", e)
		"started":
			emit_signal("started", npc, line_id, int(e["sample_rate"]))
		"viseme":
			emit_signal("viseme", npc, line_id, int(e["index"]), e["start_ms"], e["end_ms"])
		"word":
			emit_signal("word", npc, line_id, e["word"], e["start_ms"], e["end_ms"])
		"audio":
			var frames := decode_audio(e)
			if _playback != null:
				_playback.push_buffer(frames)
			emit_signal("audio", npc, line_id, frames)
		"done":
			emit_signal("done", npc, line_id, e["audio_ms"])
		"interrupted":
			# at_ms is what the bridge delivered, not what was played: drop what is still queued.
			if _playback != null:
				_playback.clear_buffer()
			emit_signal("interrupted", npc, line_id, e["at_ms"], int(e["at_sample"]))
		"error":
			emit_signal("failed", npc, line_id, e.get("code", ""), e.get("message", ""))


# The samples of an "audio" event (pcm_s16le or pcm_f32le, base64) as stereo frames.
static func decode_audio(e: Dictionary) -> PoolVector2Array:
	var buffer := StreamPeerBuffer.new()
	var f32 := e.has("pcm_f32le")
	buffer.data_array = Marshalls.base64_to_raw(e["pcm_f32le"] if f32 else e["pcm_s16le"])
	var count: int = buffer.get_size() / (4 if f32 else 2)
	var frames := PoolVector2Array()
	frames.resize(count)
	for i in range(count):
		var s: float = buffer.get_float() if f32 else buffer.get_16() / 32768.0
		frames[i] = Vector2(s, s)
	return frames
