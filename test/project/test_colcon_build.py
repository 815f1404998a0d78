"""The robot path inside the repository: after the venv's own build of the interfaces, an
in-repo ``colcon build`` installs both packages into install/ (colcon reused the venv build's
CMake cache when setup_env.sh built in build/clipseg_ros_interfaces: install/ then held only
colcon's own files and ``source install/setup.bash`` said ``not found: .../local_setup.bash``)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)


def _checkout(target: Path) -> None:
    """The repository's tracked files (what a fresh clone has), at ``target``."""
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).write_bytes((ROOT / name).read_bytes())
    os.chmod(target / ".ci" / "build_interfaces.sh", 0o755)


def _ros_environment() -> dict:
    """What sourcing a ROS 2 installation sets, for the ROS 2 of this venv."""
    env = dict(os.environ, AMENT_PREFIX_PATH=str(VENV), CMAKE_PREFIX_PATH=str(VENV),
               PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("COLCON_DEFAULTS_FILE", None)
    return env


def test_an_in_repo_colcon_build_after_the_venv_build_installs_the_interfaces(tmp_path):
    repo, prefix = tmp_path / "clipseg_ros", tmp_path / "venv_prefix"
    _checkout(repo)
    env = _ros_environment()
    # a build folder an earlier setup_env.sh left in the repository (its cache names the venv prefix)
    stale = repo / "build" / "clipseg_ros_interfaces"
    stale.mkdir(parents=True)
    prefix.mkdir()
    (stale / "CMakeCache.txt").write_text(f"CMAKE_INSTALL_PREFIX:PATH={prefix}\n")

    venv_build = subprocess.run(["bash", ".ci/build_interfaces.sh", str(VENV), str(prefix)], cwd=repo, env=env,
                                capture_output=True, text=True, timeout=600)
    assert venv_build.returncode == 0, venv_build.stdout + venv_build.stderr
    assert (prefix / "share" / "clipseg_ros_interfaces" / "package.xml").is_file()  # the venv build happened
    assert not stale.exists(), "the earlier setup's build folder must go: colcon would reuse it"

    colcon = subprocess.run(
        [str(VENV / "bin" / "colcon"), "build", "--base-paths", ".", "msg", "--packages-select", "clipseg_ros_interfaces",
         "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert colcon.returncode == 0, colcon.stdout + colcon.stderr
    installed = repo / "install" / "clipseg_ros_interfaces"
    assert (installed / "share" / "clipseg_ros_interfaces" / "local_setup.bash").is_file(), sorted(
        str(p.relative_to(installed)) for p in installed.rglob("*"))[:20]
    assert list(installed.glob("lib/python3*/site-packages/clipseg_ros_interfaces/msg/_object.py"))
    sourced = subprocess.run(["bash", "-c", "source install/setup.bash"], cwd=repo, env=env, capture_output=True,
                             text=True, timeout=60)
    assert sourced.returncode == 0 and "not found" not in sourced.stdout + sourced.stderr, sourced.stdout + sourced.stderr
