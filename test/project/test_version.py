"""The package's version lives in package.xml; setup.py, the installed metadata and the
interfaces package follow it."""

import re
import subprocess
import sys
from pathlib import Path

import clipseg_ros

ROOT = Path(__file__).resolve().parents[2]


def _xml_version(path: Path) -> str:
    return re.search(r"<version>([^<]+)</version>", path.read_text()).group(1)


def test_one_version_everywhere():
    version = _xml_version(ROOT / "package.xml")
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    assert _xml_version(ROOT / "msg" / "package.xml") == version  # released together
    assert clipseg_ros.__version__ == version
    setup_says = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
    assert setup_says.stdout.strip().splitlines()[-1] == version, setup_says.stderr
    assert not re.search(r"version\s*=\s*['\"]", (ROOT / "setup.py").read_text()), "setup.py must read package.xml"
