"""``constraints.txt``: the exact versions the README's commands install lie in pyproject.toml's ranges, every
dependency the commands install is pinned, and both commands (and CI's install) use the file."""

from __future__ import annotations

import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
INSTALLED_EXTRAS = ("cpu", "dev")  # the README's commands: pip install -c constraints.txt -e '.[cpu,dev]'


def pins() -> dict[str, Version]:
    out: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][0-9A-Za-z.!]*)", line)
        assert m, f"constraints.txt: {line!r} is not NAME==VERSION (no local label such as +cpu)"
        name = canonicalize_name(m.group(1))
        assert name not in out, f"constraints.txt: {name} pinned twice"
        out[name] = Version(m.group(2))
    return out


def requirements() -> list[Requirement]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10, which pyproject allows: pytest itself depends on tomli there
        import tomli as tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in project["dependencies"] + [r for e in INSTALLED_EXTRAS for r in extras[e]]]


def test_every_installed_dependency_is_pinned_within_its_range():
    pinned = pins()
    assert len(pinned) > 100  # the whole environment, not only the direct dependencies
    for req in requirements():
        name = canonicalize_name(req.name)
        assert name in pinned, f"constraints.txt pins no {req.name} (pyproject.toml: {req})"
        assert req.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt: {req.name}=={pinned[name]} is outside pyproject.toml's {req}"
        )


def test_the_readme_commands_and_ci_install_with_the_constraints():
    from tests.test_readme import readme_commands

    for command in readme_commands():
        assert "pip install -q -c constraints.txt -e '.[cpu,dev]'" in command, command
    installs = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if "pip install" in line]
    assert installs and all("-c constraints.txt" in line for line in installs), installs
