"""The lock file (constraints.txt) against pyproject.toml: every dependency of the package and of its extras is
pinned there, at a version its range allows, so the README's install commands are reproducible."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pins(text: str) -> dict[str, Version]:
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            out[canonicalize_name(name)] = Version(version)
    return out


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra if not r.startswith(project["name"] + "[")]
    return reqs


def test_pins_parse_and_reject_ranges():
    assert _pins("# c\ntorch==2.13.0\nTokenizers==0.22.1  # x\n") == {"torch": Version("2.13.0"),
                                                                        "tokenizers": Version("0.22.1")}
    try:
        _pins("torch>=2\n")
    except AssertionError as e:
        assert "torch>=2" in str(e)
    else:
        raise AssertionError("a range was accepted as a pin")


def test_every_requirement_is_pinned_within_its_range():
    pins = _pins((ROOT / "constraints.txt").read_text())
    reqs = _requirements()
    assert len(reqs) > 15
    for req in reqs:
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) is not pinned in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject.toml's {req.specifier}"
