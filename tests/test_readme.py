"""The README's two copy-paste commands stay true: CI runs the test command verbatim."""
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
