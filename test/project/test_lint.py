"""The linter is part of the test command: zero findings (config: ruff.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _ruff() -> str:
    beside = Path(sys.executable).with_name("ruff")
    return str(beside) if beside.exists() else (shutil.which("ruff") or "ruff")


def test_ruff_finds_nothing():
    done = subprocess.run([_ruff(), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_would_find_an_unused_import_and_unsorted_imports(tmp_path):
    # the configuration selects what the guide asks for: a file with both faults has two findings
    bad = tmp_path / "clipseg_ros" / "bad.py"
    bad.parent.mkdir()
    bad.write_text("import sys\nimport os\n\nprint(os.sep, undefined_name)\n")
    (tmp_path / "ruff.toml").write_text((ROOT / "ruff.toml").read_text())
    done = subprocess.run([_ruff(), "check", "--no-cache", "--output-format", "concise", "."], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    for code in ("F401", "F821", "I001"):
        assert code in done.stdout, done.stdout
