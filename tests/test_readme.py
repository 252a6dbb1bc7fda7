"""The README stays true: CI runs its test command verbatim; its concept table names real code."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, re.S)


def test_exactly_two_commands_and_ci_runs_the_test_one():
    demo, tests = readme_commands()
    assert "pt2i run configs/tiny.yaml" in demo and "python3 -m venv .venv" in demo
    assert "pytest" in tests and "python3 -m venv .venv" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests.strip() in ci.splitlines(), ".ci/run must call the README's test command verbatim"


def test_demo_config_exists():
    assert (ROOT / "configs" / "tiny.yaml").is_file()


def concept_rows() -> list[tuple[str, list[str], list[str]]]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Paper concepts in the code", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if len(cells) != 3 or cells[0] in ("concept", "---") or set(cells[0]) <= {"-"}:
            continue
        files = re.findall(r"`([^`]+)`", cells[1])
        names = re.findall(r"`([^`]+)`", cells[2])
        rows.append((cells[0], files, names))
    return rows


def defined_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def test_concept_table_names_exist():
    rows = concept_rows()
    assert len(rows) >= 20
    for concept, files, names in rows:
        assert files and names, concept
        folder = (ROOT / files[0]).parent
        paths = [ROOT / files[0]] + [folder / f if "/" not in f else ROOT / f for f in files[1:]]
        for path in paths:
            assert path.is_file(), f"{concept}: {path} does not exist"
        defined = set().union(*(defined_names(p) for p in paths))
        for name in names:
            assert name in defined, f"{concept}: {name} is not defined in {', '.join(files)}"
