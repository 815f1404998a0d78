import re
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "clipseg_ros"
# The one version: package.xml's (ROS tools read it there); clipseg_ros.__version__ reads the
# installed metadata this writes.
VERSION = re.search(r"<version>([^<]+)</version>", (Path(__file__).parent / "package.xml").read_text()).group(1)

setup(
    name=PACKAGE,
    version=VERSION,
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.rviz")),
    ],
    # torch and transformers are installed with pip on the robot (its CUDA build of torch);
    # the ROS dependencies come from rosdep (package.xml).
    install_requires=["setuptools", "numpy", "pillow", "opencv-contrib-python-headless", "transformers>=4.46",
                      "safetensors"],
    # the labeller: rosbag2 in/out, COCO RLE, progress bar;
    # int8 on CPUs with VNNI (dtype auto/int8): onnxruntime runs the vision encoder's int8 graph,
    # onnx quantises it (torchao, matching your torch, is the fallback without them)
    extras_require={"label": ["rosbags", "pycocotools", "tqdm"], "int8": ["onnxruntime", "onnx"]},
    zip_safe=True,
    maintainer="clipseg_ros maintainers",
    maintainer_email="maintainers@clipseg-ros.invalid",
    description="Open-vocabulary segmentation node (CLIPSeg) for ROS 2",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "clipseg_node = clipseg_ros.ros.process:run",
            "clipseg_demo = clipseg_ros.tools.demo:main",
            "clipseg-label = clipseg_ros.tools.label:main",
            "clipseg-prepare = clipseg_ros.tools.prepare:main",
        ],
    },
)
