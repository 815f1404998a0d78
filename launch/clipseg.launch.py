"""Launch the clipseg node. Thin on purpose: it only maps arguments to parameters and remaps.

    ros2 launch clipseg_ros clipseg.launch.py image:=/camera/color/image_raw prompts:="cup;door handle"
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

ARGUMENTS = {
    "image": ("image", "camera topic remapped onto the node's 'image' input (ending in /compressed: CompressedImage)"),
    "prompts": ("", "text prompts separated by ';' (empty: from params_file)"),
    "depth": ("", "aligned depth image topic of the camera (16UC1 mm or 32FC1 m); empty: no 3D outputs"),
    "prompt_store": ("", "directory that keeps the active prompts across restarts (empty: none)"),
    "model": ("CIDAS/clipseg-rd64-refined", "hub id or local checkpoint directory"),
    "device": ("auto", "auto | cpu | cuda | cuda:<index>"),
    "rate": ("5.0", "segmentation rate in Hz (0 = as fast as possible)"),
    "lifecycle": ("false", "true: managed node, waits for 'ros2 lifecycle set <node> configure' and 'activate'"),
    "params_file": ("", "parameter YAML (default: the package's config/clipseg.yaml)"),
    "namespace": ("", "namespace for the node"),
    "rviz": ("false", "start rviz2 with config/clipseg.rviz"),
}


def _node(context):
    share = get_package_share_directory("clipseg_ros")
    arg = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    params_file = arg("params_file") or os.path.join(share, "config", "clipseg.yaml")
    overrides = {"model": arg("model"), "device": arg("device"), "rate": float(arg("rate")),
                 "lifecycle": arg("lifecycle").lower() in ("true", "1")}
    prompts = [p.strip() for p in arg("prompts").split(";") if p.strip()]
    if prompts:
        overrides["prompts"] = prompts
    if arg("depth"):
        overrides["depth_topics"] = [arg("depth")]
    if arg("prompt_store"):
        overrides["prompt_store"] = arg("prompt_store")
    return [Node(package="clipseg_ros", executable="clipseg_node", name="clipseg", namespace=arg("namespace"),
                 parameters=[params_file, overrides], remappings=[("image", arg("image"))], output="screen")]


def generate_launch_description():
    share = get_package_share_directory("clipseg_ros")
    args = [DeclareLaunchArgument(name, default_value=default, description=text)
            for name, (default, text) in ARGUMENTS.items()]
    rviz = Node(package="rviz2", executable="rviz2", arguments=["-d", os.path.join(share, "config", "clipseg.rviz")],
                condition=IfCondition(LaunchConfiguration("rviz")))
    return LaunchDescription(args + [OpaqueFunction(function=_node), rviz])
