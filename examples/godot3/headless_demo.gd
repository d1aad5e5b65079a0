# Headless check of the voxgate NPC client (run by tests/test_npc.py):
#   VOXGATE_NPC_URL=ws://127.0.0.1:8790 godot3-server --path examples/godot3 -s headless_demo.gd
# A guard starts a long line and is interrupted once audio came; then says a short line to the end;
# then the bridge is told to quit. Prints every event it received (audio as a sample count) on lines
# starting with "voxgate-npc ", and exits 0 after "bye" (1 on a timeout or a closed bridge).
extends SceneTree

const VoxgateNpc = preload("res://addons/voxgate_npc/voxgate_npc.gd")
const LONG_LINE := "Halt! Who goes there? State your name and your business in the city, traveller, or turn back now."

var client = VoxgateNpc.new()
var elapsed := 0.0
var samples := {}                 # line_id -> samples decoded
var interrupted_sent := false
var finished := false


func _init() -> void:
	client.connect("event_received", self, "_on_event")
	client.connect("audio", self, "_on_audio")
	client.connect("bridge_closed", self, "_on_closed")
	var url := OS.get_environment("VOXGATE_NPC_URL")
	if client.connect_to_bridge(url) != OK:
		_finish(1, "cannot connect to %s" % url)


func _idle(delta: float) -> bool:
	client.poll()
	elapsed += delta
	if elapsed > 120.0:
		_finish(1, "timed out")
	return false


func _on_event(e: Dictionary) -> void:
	if e["event"] != "audio":
		print("voxgate-npc event ", to_json(e))
	match e["event"]:
		"ready":
			client.configure("guard", e["voices"][0], 1.1)
			client.say("guard", LONG_LINE, "g1")
		"interrupted":
			if e["line_id"] == "g1":
				client.say("guard", "Move along.", "g2")
		"done":
			if e["line_id"] == "g2":
				client.quit_bridge()
		"bye":
			for line_id in samples:
				print("voxgate-npc samples ", to_json({"line_id": line_id, "samples": samples[line_id]}))
			_finish(0, "bye")


func _on_audio(_npc: String, line_id: String, frames: PoolVector2Array) -> void:
	samples[line_id] = samples.get(line_id, 0) + frames.size()
	if line_id == "g1" and samples[line_id] >= 4800 and not interrupted_sent:
		interrupted_sent = true  # 0.2 s of audio came: cut the line
		client.interrupt("guard")


func _on_closed() -> void:
	_finish(1, "the bridge closed the connection")


func _finish(code: int, why: String) -> void:
	if finished:
		return
	finished = true
	print("voxgate-npc end ", to_json({"code": code, "why": why}))
	quit(code)
