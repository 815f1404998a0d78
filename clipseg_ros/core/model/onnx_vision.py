"""The vision pass (CLIP's vision layers up to the last extracted one) as an onnxruntime session
with dynamic int8 weights: the int8 path that is fastest on CPUs with int8 dot products.

Why onnxruntime and not torchao for int8: on a 2-core AVX-512 VNNI machine the same pass took
157 ms in onnxruntime's int8 against 257 ms with torchao's eager int8 and 262 ms in torch
bfloat16 (``benchmarks/probe_onnxruntime.py``, one run, the pass alone; inside the engine 194-210 ms
against bfloat16's 296-306 ms, ``bench_precision.py``). torchao is built to run under
torch.compile, and compiling the bfloat16 vision layers took 18.6 s here: too long for a start-up.

The graph is exported once per model from :class:`~clipseg_ros.core.model.network.ClipSegNetwork`'s own
float32 vision pass (so it is the same maths the tests check against transformers), quantised with
``onnxruntime.quantization.quantize_dynamic`` (int8 weights, activations quantised per call) and
cached on disk under a key of the weights, the layers run, the input size and the library
versions; a later start loads the cached file (0.2-0.3 s). Export and quantisation take ~5 s on 2
cores, so :class:`~clipseg_ros.core.model.network.ClipSegNetwork` does them on a thread of their own from a
float32 copy of the model while the first frames run in torch. Files are written under a temporary
name and renamed, so a crash never leaves a half file that a later start would load.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

EXPORT_FORMAT = 2  # bump when the export itself changes: old cache files are then not reused


def onnxruntime_available() -> bool:
    """onnxruntime to run the graph and onnx to quantise it."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def default_cache_dir() -> Path:
    """``$CLIPSEG_ROS_CACHE``, else ``$XDG_CACHE_HOME/clipseg_ros``, else ``~/.cache/clipseg_ros``."""
    if os.environ.get("CLIPSEG_ROS_CACHE"):
        return Path(os.environ["CLIPSEG_ROS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clipseg_ros"


def cache_key(vision_model: torch.nn.Module, layers_run: int, extract_layers: Sequence[int], size: int,
              weights: str = "int8") -> str:
    """A digest of everything the exported graph depends on: the weights and config, the layers
    and size, the quantisation, and the versions of every library that shapes the graph
    (transformers' code is what is traced)."""
    import onnx
    import onnxruntime
    import transformers

    digest = hashlib.sha256()
    digest.update(json.dumps({"format": EXPORT_FORMAT, "layers": layers_run, "extract": list(extract_layers),
                              "size": size, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                              "onnx": onnx.__version__, "transformers": transformers.__version__,
                              "weights": weights,
                              "config": vision_model.config.to_json_string()}, sort_keys=True).encode())
    for name, tensor in sorted(vision_model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


class _VisionPass(torch.nn.Module):
    """The torch vision pass as a module, for the exporter (which sees the weights as parameters
    only when the model is a registered submodule)."""

    def __init__(self, model: torch.nn.Module, encode: Callable[[torch.Tensor], list[torch.Tensor]]):
        super().__init__()
        self.model = model
        self._encode = encode

    def forward(self, pixels):
        return tuple(self._encode(pixels))


@contextlib.contextmanager
def eager_attention(model: torch.nn.Module):
    """Every attention in ``model`` set to transformers' eager implementation for the duration.
    The exporter has no rule for PyTorch's fused attention at this opset; eager attention is the
    same computation. Restored afterwards: torch keeps using the fused kernel."""
    configs = {id(m.config): m.config for m in model.modules() if hasattr(getattr(m, "config", None), "_attn_implementation")}
    saved = {key: config._attn_implementation for key, config in configs.items()}
    try:
        for config in configs.values():
            config._attn_implementation = "eager"
        yield
    finally:
        for key, config in configs.items():
            config._attn_implementation = saved[key]


def export_graph(module: torch.nn.Module, inputs: tuple, path: Path, input_names: Sequence[str],
                 output_names: Sequence[str], dynamic_axes: dict | None = None) -> None:
    """``module`` (whose model is a registered submodule, so the exporter sees its weights) traced
    on ``inputs`` into an ONNX graph at ``path`` (opset 17, eager attention)."""
    with eager_attention(module), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(module, inputs, str(path), dynamo=False, opset_version=17, input_names=list(input_names),
                          output_names=list(output_names), dynamic_axes=dynamic_axes)


def export_float32(model: torch.nn.Module, encode: Callable[[torch.Tensor], list[torch.Tensor]], size: int,
                   path: Path) -> None:
    """Export ``encode`` (float32, one ``size`` x ``size`` frame) as an ONNX graph at ``path``. The
    batch is fixed at 1: a dynamic batch axis made the int8 pass ~20% slower (245 against 200 ms,
    interleaved runs), and frames run one at a time anyway (:class:`OnnxVisionPass`)."""
    pixels = torch.zeros(1, 3, size, size)
    module = _VisionPass(model, encode)
    with eager_attention(model), torch.no_grad():
        outputs = [f"layer{i}" for i in range(len(module(pixels)))]
    export_graph(module, (pixels,), path, ["pixels"], outputs)


def quantize_int8(float_path: Path, int8_path: Path, weights: str = "int8") -> None:
    """Dynamic int8 (8-bit weights, activations quantised per call to uint8) of the graph at
    ``float_path``; ``weights``: ``int8`` or ``uint8`` (see
    :func:`clipseg_ros.core.model.precision.int8_weight_type`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if weights not in ("int8", "uint8"):
        raise ValueError(f"weights must be 'int8' or 'uint8', not {weights!r}")
    with _without_preprocessing_advice():
        quantize_dynamic(str(float_path), str(int8_path),
                         weight_type=QuantType.QInt8 if weights == "int8" else QuantType.QUInt8)


def export_int8(model: torch.nn.Module, encode: Callable[[torch.Tensor], list[torch.Tensor]], size: int,
                path: Path, weights: str = "int8") -> None:
    """:func:`export_float32`, then :func:`quantize_int8` into ``path`` (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(".export_*"):  # left by a process killed while exporting
        if time.time() - stale.stat().st_mtime > 600:
            shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export_") as tmp:
        float_path, int8_path = Path(tmp) / "vision.onnx", Path(tmp) / "vision_int8.onnx"
        export_float32(model, encode, size, float_path)
        quantize_int8(float_path, int8_path, weights)
        os.replace(int8_path, path)


@contextlib.contextmanager
def _without_preprocessing_advice():
    """quantize_dynamic logs "Please consider to run pre-processing before quantization" on the
    root logger (shape inference for static quantisation; dynamic int8 does not need it): kept out
    of the node's log."""
    def advice_dropped(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()
    root = logging.getLogger()
    root.addFilter(advice_dropped)
    try:
        yield
    finally:
        root.removeFilter(advice_dropped)


def session_options(threads: int):
    """onnxruntime's options for a graph that runs beside torch: ``threads`` in the operators'
    pool, one for the graph, and no spinning between calls (the decoder runs in torch's thread
    pool right after the vision pass)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxVisionPass:
    """Runs an exported graph (the cached int8 one): ``(B, 3, size, size)`` float pixels in, the hidden states after
    each extracted layer out (``B, T, hidden`` float32 torch tensors), as
    ``ClipSegNetwork.encode_pixels`` returns them."""

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        self.path = path
        self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        self.size = int(self.session.get_inputs()[0].shape[-1])

    def __call__(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        pixels = pixel_values.detach().to("cpu", torch.float32).numpy()
        # One frame per run: dynamic int8 scales each activation by its whole tensor, so a batch
        # would let one camera's frame change another's masks. On a CPU the vision pass fills
        # the cores with one frame already, so nothing is lost.
        per_frame = [self.session.run(None, {"pixels": np.ascontiguousarray(frame[None])}) for frame in pixels]
        return [torch.from_numpy(np.concatenate(layer)) for layer in zip(*per_frame)]


def graph_path(vision_model: torch.nn.Module, layers_run: int, extract_layers: Sequence[int], size: int,
               cache_dir: Path | None = None, weights: str = "int8") -> Path:
    """Where this model's int8 vision graph is (or will be) cached. Call it on the float32 weights."""
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    key = cache_key(vision_model, layers_run, extract_layers, size, weights)
    return cache_dir / "onnx" / f"vision_int8_{key}.onnx"


def load_cached(path: Path, threads: int) -> OnnxVisionPass | None:
    """The session for a cached graph; None when there is none. A cached file that does not load
    (damaged) is deleted, so that it is exported again."""
    if not path.is_file():
        return None
    try:
        return OnnxVisionPass(path, threads)
    except Exception:  # noqa: BLE001 - whatever onnxruntime says about a damaged file
        path.unlink(missing_ok=True)
        return None
