"""Every table of benchmark figures in the README and docs is rendered from the JSON in
benchmarks/results/ that names it (benchmarks/tables.py): a rerun cannot leave a stale table."""

import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import tables  # noqa: E402  (a script folder, not a package)


def test_every_marked_table_matches_its_result_file():
    stale = {str(p.relative_to(ROOT)) for p in tables.documents() if tables.render(p.read_text()) != p.read_text()}
    assert not stale, f"run `python benchmarks/tables.py`: {sorted(stale)} differ from benchmarks/results"


def test_every_table_of_figures_is_a_rendered_one():
    # performance.md holds only rendered tables (other pages' tables are interfaces and
    # parameters; the front page's one table of figures is the rendered headline)
    assert "<!-- table: headline (benchmarks/results/" in (ROOT / "README.md").read_text()
    for path in (ROOT / "docs" / "performance.md",):
        inside, loose = False, []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.startswith("<!-- table: "):
                inside = True
            elif line.startswith("<!-- /table -->"):
                inside = False
            elif line.startswith("|") and not inside:
                loose.append(f"{path.name}:{number}: {line[:60]}")
        assert not loose, "tables of figures must come from benchmarks/tables.py:\n" + "\n".join(loose)


def test_every_result_file_named_exists_and_every_renderer_is_used():
    used = set()
    for path in tables.documents():
        for match in tables.BLOCK.finditer(path.read_text()):
            assert (tables.RESULTS / match["file"]).is_file(), match["file"]
            used.add(match["name"])
    assert used == set(tables.RENDERERS)


def test_a_changed_result_makes_the_check_fail(tmp_path):
    results = tmp_path / "results"
    shutil.copytree(tables.RESULTS, results)
    engine = json.loads((results / "engine_cpu.json").read_text())
    engine["rows"][0]["engine_ms"] = 1234.5
    (results / "engine_cpu.json").write_text(json.dumps(engine))
    text = (ROOT / "docs" / "performance.md").read_text()
    rendered = tables.render(text, results)
    assert rendered != text and "| 1234.5 |" in rendered
    assert re.search(r"<!-- table: engine \(benchmarks/results/engine_cpu.json\) -->\n\| prompts", rendered)


def test_the_interfaces_page_holds_every_message_and_service_verbatim():
    page = (ROOT / "docs" / "interfaces.md").read_text()
    files = sorted((ROOT / "msg").glob("*.msg")) + sorted((ROOT / "srv").glob("*.srv"))
    assert len(files) >= 7
    for path in files:
        assert f"### {path.parent.name}/{path.name}\n\n```\n{path.read_text().rstrip()}\n```" in page, (
            f"docs/interfaces.md: {path.name} is missing or differs from the shipped definition")
