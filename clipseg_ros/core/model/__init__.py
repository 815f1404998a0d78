"""The model: CLIPSeg loaded from a checkpoint (:mod:`.network`), the one-backbone-pass engine
(:mod:`.engine`), device and precision choice by what the CPU/GPU can do (:mod:`.device`,
:mod:`.precision`, :mod:`.onnx_vision` for int8), image preprocessing, a random checkpoint for
runs without the hub, and the agreement measure between precisions.

May import: core (results for post-processing the logits, prompts for the prompt set type).
"""
