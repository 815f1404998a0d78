"""In what precision each part of the model runs, chosen from what the hardware does natively.

No ROS in here. :func:`choose_precision` turns the ``dtype`` setting into a :class:`Precision`:

- ``auto`` on CUDA: float16 encoders, float32 decoder. The decoder's attention (4 heads x 16
  dims) breaks in float16 (the LiteRT port of CLIPSeg found it and kept it in float32); the
  encoders are fine in float16 and are nearly all the work.
- ``auto`` on a CPU with int8 dot products (``avx512_vnni``, ``avx_vnni``, ``amx_int8``) and
  onnxruntime installed: the vision encoder (nearly all the work) in onnxruntime's dynamic int8
  (:mod:`clipseg_ros.core.model.onnx_vision`), the text encoder and the decoder in bfloat16 where the CPU
  does bf16 natively, else float32. On a 2-core AVX-512 machine with both, that vision pass took
  157 ms against 262 ms in bfloat16 (``benchmarks/probe_onnxruntime.py``).
- ``auto`` on a CPU with native bf16 (``avx512_bf16`` or ``amx_bf16``), without onnxruntime:
  bfloat16 throughout.
- ``auto`` on a CPU with int8 dot products but neither onnxruntime nor native bf16: torchao's
  dynamic int8 on the vision encoder's Linear layers, everything else float32 (torch's own
  ``torch.ao.quantization.quantize_dynamic`` is deprecated in favour of torchao); without either
  library, float32.
- ``auto`` on an x86 CPU with AVX2 but neither int8 dot products nor native bf16, with
  onnxruntime: the vision encoder in onnxruntime's dynamic int8 with unsigned (u8u8) weights,
  the rest float32. On a 2-core AVX2-only EPYC the vision pass took 503 against 785 ms in
  float32, with masks agreeing on 99.43% of pixels (worst frame-and-prompt 99.31%, worst IoU
  0.990, no object lost; random weights; ``benchmarks/int8_weights.py``). Signed weights can
  saturate AVX2's u8s8 kernels (``vpmaddubsw``), and their 7-bit cure (``reduce_range``)
  agreed on 98.87% only, below the 99% goal.
- ``auto`` otherwise: float32. bf16 emulated on an AVX2-only CPU ran 6x *slower* than float32.
- An explicit ``float32``, ``bfloat16``, ``float16`` or ``int8`` always wins (``float16`` keeps
  the decoder in float32 everywhere: correct by construction; ``int8`` is the int8 vision
  encoder, onnxruntime's where installed, else torchao's, with everything else in float32).

CPU features come from ``/proc/cpuinfo`` (Linux), else from torch's own CPU probes.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass
from functools import lru_cache

import torch

PRECISION_NAMES = ("auto", "float32", "bfloat16", "float16", "int8")
BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")  # bf16: Arm's (FEAT_BF16, in /proc/cpuinfo's Features)
INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni", "i8mm", "asimddp")  # i8mm, asimddp: Arm's int8 dot products
FP16_DECODER_NOTE = "decoder in float32: its attention (4 heads x 16 dims) breaks in float16"


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU's model name and the feature flags that matter here."""

    model: str
    flags: frozenset[str]

    @property
    def native_bf16(self) -> str:
        """The flag that gives native bf16 arithmetic, or ''."""
        return next((f for f in BF16_FLAGS if f in self.flags), "")

    @property
    def int8_dot(self) -> str:
        """The flag that gives int8 dot products (VNNI/AMX), or ''."""
        return next((f for f in INT8_FLAGS if f in self.flags), "")


@lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This machine's CPU (cached): from /proc/cpuinfo where it lists the CPU's features, else
    from torch's own probes."""
    try:
        with open("/proc/cpuinfo") as f:
            parsed = parse_cpuinfo(f.read())
        if parsed is not None:
            return parsed
    except OSError:
        pass
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported",
              "avx512_vnni": "_is_avx512_vnni_supported", "avx_vnni": "_is_avx2_vnni_supported"}
    found = set()
    for flag, probe in probes.items():
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                found.add(flag)
        except RuntimeError:
            pass
    # torch's VNNI probe said no on an AMD EPYC whose cpuinfo lists avx512_vnni; every x86 CPU
    # with avx512_bf16 (Cooper Lake, Sapphire Rapids and later, Zen 4 and later) has it.
    if "avx512_bf16" in found:
        found.add("avx512_vnni")
    return CpuFeatures("unknown", frozenset(found))


def parse_cpuinfo(text: str) -> CpuFeatures | None:
    """A /proc/cpuinfo's CPU: x86 lists ``flags``, Arm (aarch64) ``Features``; None when neither."""
    flags = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
    if not flags:
        return None
    model = re.search(r"^(?:model name|Model|Hardware)\s*:\s*(.+)$", text, re.M)
    return CpuFeatures(model.group(1).strip() if model else "unknown", frozenset(flags.group(1).split()))


def _is_x86(machine: str | None) -> bool:
    import platform

    return (machine or platform.machine()).lower() in ("x86_64", "amd64", "i686", "x86")


def int8_weight_type(cpu: CpuFeatures, machine: str | None = None) -> str:
    """The weights' type for onnxruntime's dynamic int8: ``uint8`` on x86 without int8 dot
    products (VNNI/AMX), where the u8s8 kernels' int16 sums (``vpmaddubsw``) can saturate and
    u8u8 cannot; ``int8`` elsewhere. The 7-bit alternative onnxruntime offers (``reduce_range``)
    agreed with float32 on 98.87% of mask pixels on an AVX2-only EPYC, u8u8 on 99.43%."""
    return "uint8" if _is_x86(machine) and not cpu.int8_dot else "int8"


def quiet_torchao_import() -> None:
    """Call before importing transformers. transformers imports torchao when it is installed;
    torchao then warns that its CUDA-only kernels do not load on a CPU machine, and torch that
    torchao registers enums it no longer needs to: harmless, but three warnings in every start-up
    log. Loggers someone already configured are left alone."""
    for name in ("torchao", "torch.utils._pytree"):
        if logging.getLogger(name).level == logging.NOTSET:
            logging.getLogger(name).setLevel(logging.ERROR)


def torchao_available() -> bool:
    return importlib.util.find_spec("torchao") is not None


@dataclass(frozen=True)
class Precision:
    """``encoders``: dtype of CLIP's text and vision encoders (weights and activations);
    ``decoder``: of CLIPSeg's decoder; ``vision_int8``: which runtime runs the vision pass in
    dynamic int8 (``onnxruntime``: the whole pass, ``torchao``: its Linear layers; empty: none);
    ``reason``: why this was picked (for the log and diagnostics)."""

    name: str
    encoders: torch.dtype
    decoder: torch.dtype
    vision_int8: str = ""
    reason: str = ""

    def describe(self) -> str:
        return f"{self.name} ({self.reason})" if self.reason else self.name


def check_precision_name(dtype: str) -> str:
    """The normalised name; ValueError for one that is not in :data:`PRECISION_NAMES`."""
    name = (dtype or "auto").strip().lower()
    if name not in PRECISION_NAMES:
        raise ValueError(f"unknown dtype '{dtype}' (expected {', '.join(PRECISION_NAMES)})")
    return name


def choose_precision(dtype: str, device: torch.device, cpu: CpuFeatures | None = None,
                     has_torchao: bool | None = None, has_onnxruntime: bool | None = None,
                     machine: str | None = None) -> Precision:
    """The :class:`Precision` for the ``dtype`` setting on ``device`` (see the module doc);
    ``machine``: the architecture (default: this one's).
    ValueError for an unknown name, and for ``int8`` with neither onnxruntime nor torchao."""
    from clipseg_ros.core.model.onnx_vision import onnxruntime_available

    name = check_precision_name(dtype)
    has_torchao = torchao_available() if has_torchao is None else has_torchao
    has_onnxruntime = onnxruntime_available() if has_onnxruntime is None else has_onnxruntime
    if name == "float32":
        return Precision("float32", torch.float32, torch.float32, reason="set")
    if name == "bfloat16":
        return Precision("bfloat16", torch.bfloat16, torch.bfloat16, reason="set")
    if name == "float16":
        return Precision("float16", torch.float16, torch.float32, reason=f"set; {FP16_DECODER_NOTE}")
    if name == "int8":
        if has_onnxruntime:
            return Precision("int8", torch.float32, torch.float32, vision_int8="onnxruntime",
                             reason="set; the vision encoder in dynamic int8 (onnxruntime), the rest float32")
        if not has_torchao:
            raise ValueError("dtype int8 needs onnxruntime and onnx, or torchao (pip install onnxruntime onnx)")
        return Precision("int8", torch.float32, torch.float32, vision_int8="torchao",
                         reason="set; dynamic int8 on the vision encoder's Linear layers (torchao), the rest float32")
    if device.type == "cuda":
        return Precision("float16", torch.float16, torch.float32, reason=f"auto on CUDA; {FP16_DECODER_NOTE}")
    cpu = cpu_features() if cpu is None else cpu
    if cpu.int8_dot and has_onnxruntime:
        rest = torch.bfloat16 if cpu.native_bf16 else torch.float32
        rest_note = (f"bfloat16 (native: {cpu.native_bf16})" if cpu.native_bf16 else "float32 (no native bf16)")
        return Precision("int8", rest, rest, vision_int8="onnxruntime",
                         reason=f"auto: this CPU has int8 dot products ({cpu.int8_dot}): the vision encoder in "
                                f"dynamic int8 (onnxruntime), text encoder and decoder in {rest_note}")
    if cpu.native_bf16:
        return Precision("bfloat16", torch.bfloat16, torch.bfloat16,
                         reason=f"auto: this CPU does bf16 natively ({cpu.native_bf16})")
    if cpu.int8_dot:
        if has_torchao:
            return Precision("int8", torch.float32, torch.float32, vision_int8="torchao",
                             reason=f"auto: this CPU has int8 dot products ({cpu.int8_dot}) but no native bf16; "
                                    "dynamic int8 on the vision encoder's Linear layers (torchao)")
        return Precision("float32", torch.float32, torch.float32,
                         reason=f"auto: int8 would suit this CPU ({cpu.int8_dot}) but neither onnxruntime nor "
                                "torchao is installed")
    avx2 = "avx2" in cpu.flags and _is_x86(machine)
    if avx2 and has_onnxruntime:
        return Precision("int8", torch.float32, torch.float32, vision_int8="onnxruntime",
                         reason="auto: this CPU has AVX2 but neither native bf16 nor int8 dot products (VNNI): "
                                "the vision encoder in dynamic int8 (onnxruntime) with unsigned weights, text encoder "
                                "and decoder in float32")
    return Precision("float32", torch.float32, torch.float32,
                     reason="auto: this CPU has neither native bf16 nor int8 dot products (VNNI)"
                            + (", and onnxruntime for AVX2's int8 is not installed" if avx2 else ""))


def quantize_vision_int8(vision_encoder: torch.nn.Module) -> None:
    """Dynamic int8 activations and int8 per-channel weights on every Linear layer of
    ``vision_encoder`` (in place; torchao)."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    # set_inductor_config=False: no global torch.compile settings changed behind the caller's back
    quantize_(vision_encoder, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False))
