"""The package layout is the architecture: the core never reaches the ROS shell or the tools,
the shell never reaches the tools, and the core runs where no ROS is installed."""

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import clipseg_ros

PACKAGE = Path(clipseg_ros.__file__).resolve().parent
LAYERS = ("core", "ros", "tools")  # each may import only the ones before it
ROS_TOP_LEVEL = ("rclpy", "rcl_interfaces", "builtin_interfaces", "launch", "launch_ros", "rosidl_runtime_py")


def _modules(layer: str) -> list[Path]:
    return sorted((PACKAGE / layer).rglob("*.py"))


def _dotted(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at module level or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _is_ros(name: str) -> bool:
    top = name.split(".")[0]
    return top in ROS_TOP_LEVEL or top.endswith("_msgs") or top.endswith("_interfaces")


def test_every_package_says_what_lives_there_and_what_it_may_import():
    packages = [p for p in PACKAGE.rglob("__init__.py")]
    assert len(packages) >= 8
    for init in packages:
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 80, f"{init} has no docstring saying what lives there"
        if init.parent != PACKAGE:
            assert "May import" in doc, f"{init}: say what its modules may import"


def test_no_layer_imports_a_later_one():
    offences = []
    for i, layer in enumerate(LAYERS):
        later = tuple(f"clipseg_ros.{other}" for other in LAYERS[i + 1:])
        for path in _modules(layer):
            offences += [f"{_dotted(path)} imports {name}" for name in sorted(_imported(path))
                         if name.startswith(later) or (layer == "core" and _is_ros(name))]
    assert not offences, "\n".join(offences)


def test_the_layering_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    import rclpy\n    from clipseg_ros.ros.node import ClipSegNode\n")
    assert {"rclpy", "clipseg_ros.ros.node"} <= _imported(module)


def test_every_core_module_imports_where_ros_cannot_be_imported():
    names = [_dotted(p) for p in _modules("core")]
    assert len(names) >= 20
    # A finder in front of every other: any ROS module (rclpy, *_msgs, *_interfaces) fails to
    # import, as on a machine without ROS.
    script = textwrap.dedent(f"""
        import importlib, importlib.abc, json, sys
        ROS = {ROS_TOP_LEVEL!r}
        class NoRos(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                top = name.split(".")[0]
                if top in ROS or top.endswith("_msgs") or top.endswith("_interfaces"):
                    raise ModuleNotFoundError(f"no ROS here: {{name}}")
                return None
        sys.meta_path.insert(0, NoRos())
        for top in list(sys.modules):
            if top.split(".")[0] in ROS:
                del sys.modules[top]
        failed = {{}}
        for name in {names!r}:
            try:
                importlib.import_module(name)
            except Exception as exc:
                failed[name] = f"{{type(exc).__name__}}: {{exc}}"
        probe = None
        try:
            import sensor_msgs.msg
        except ModuleNotFoundError as exc:
            probe = str(exc)
        print(json.dumps({{"failed": failed, "probe": probe,
                          "ros_loaded": sorted(m for m in sys.modules if m.split(".")[0] in ROS)}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["probe"] == "no ROS here: sensor_msgs", "the blocker must work for the check to mean anything"
    assert report["failed"] == {}, report["failed"]
    assert report["ros_loaded"] == []
