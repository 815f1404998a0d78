"""config/clipseg.yaml and launch/clipseg.launch.py name only parameters the node declares.

The launch package is not installable here: the launch file is parsed, not executed (and
built for real where `launch` is importable).
"""

import ast
from pathlib import Path

import pytest
import yaml

from clipseg_ros.ros.settings import parameter_specs

ROOT = Path(__file__).resolve().parents[2]
DECLARED = {name: default for name, default, _ in parameter_specs()}
LAUNCH_ONLY = {"image", "depth", "params_file", "namespace", "rviz"}  # remap, file, namespace, extra process


def launch_arguments():
    tree = ast.parse((ROOT / "launch" / "clipseg.launch.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ARGUMENTS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("ARGUMENTS not found in the launch file")


def test_yaml_keys_are_declared_parameters_with_matching_defaults():
    doc = yaml.safe_load((ROOT / "config" / "clipseg.yaml").read_text())
    assert list(doc) == ["/**"], "key the file with /** so renamed nodes get it"
    params = doc["/**"]["ros__parameters"]
    unknown = set(params) - set(DECLARED)
    assert not unknown, f"not declared by the node: {unknown}"
    for name, value in params.items():
        assert value == DECLARED[name], f"{name}: yaml {value!r} != node default {DECLARED[name]!r}"
    # every declared parameter is documented in the file (commented-out ones too)
    text = (ROOT / "config" / "clipseg.yaml").read_text()
    assert all(f"{name}:" in text for name in DECLARED if name != "camera_names")


def test_launch_arguments_map_to_declared_parameters():
    args = launch_arguments()
    assert LAUNCH_ONLY <= set(args)
    assert set(args) - LAUNCH_ONLY <= set(DECLARED), set(args) - LAUNCH_ONLY - set(DECLARED)
    for name in set(args) - LAUNCH_ONLY - {"prompts"}:
        default = args[name][0]
        assert str(DECLARED[name]).lower() == default.lower(), name


def test_launch_and_config_are_installed():
    setup = (ROOT / "setup.py").read_text()
    assert "launch/*.launch.py" in setup and "config/*.yaml" in setup and "config/*.rviz" in setup
    rviz = yaml.safe_load((ROOT / "config" / "clipseg.rviz").read_text())
    topics = [d["Topic"]["Value"] for d in rviz["Visualization Manager"]["Displays"]]
    assert topics == ["/clipseg/overlay", "/clipseg/label", "/clipseg/markers", "/clipseg/cloud"]


def test_launch_description_builds_where_launch_is_installed():
    pytest.importorskip("launch_ros", reason="launch_ros is not on PyPI; checked by parsing above")
    import importlib.util

    spec = importlib.util.spec_from_file_location("clipseg_launch", ROOT / "launch" / "clipseg.launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.generate_launch_description().entities


def test_per_camera_lists_are_empty_or_one_per_image_topic():
    from clipseg_ros.ros.settings import NodeSettings

    values = {name: ([] if default is None else default) for name, default, _ in parameter_specs()}
    values["image_topics"] = ["/front/image", "/rear/image"]
    settings = NodeSettings.from_values(values)
    assert settings.depth_topic_of(0) is None
    settings = NodeSettings.from_values(dict(values, depth_topics=["/front/depth/image_raw", ""]))
    assert settings.depth_topic_of(0) == ("/front/depth/image_raw", "/front/depth/camera_info", "/front/camera_info")
    # the colour CameraInfo beside the topic the node really subscribes to (after remapping)
    assert settings.depth_topic_of(0, "/cam/color/image_raw/compressed")[2] == "/cam/color/camera_info"
    assert settings.depth_topic_of(1) is None
    for name in ("camera_names", "depth_topics", "camera_info_topics", "image_camera_info_topics"):
        with pytest.raises(ValueError, match=f"{name} has 1 entries for 2 image_topics"):
            NodeSettings.from_values(dict(values, **{name: ["x"]}))
