"""The ROS-free core: everything that computes, as plain Python, torch, numpy and OpenCV.

Arrays in, frozen dataclasses out; shapes are in the docstrings. Subpackages by concern:
:mod:`.model` (CLIPSeg, its loading, device and precision), :mod:`.prompts` (what is active,
example images, the prompt store and its policy), :mod:`.results` (masks, objects, 3D, clouds,
overlay), :mod:`.motion` (flow propagation, smoothing, tracks). :mod:`.atomic_files` is the one
helper they share with the tools (crash-safe writes).

May import: the standard library, numpy, OpenCV, torch, transformers, and other core modules.
Never rclpy or a message package (``*_msgs``, ``*_interfaces``): ``test/project/test_layout.py``
imports every module here in a process where those cannot be imported.
"""
