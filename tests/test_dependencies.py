"""No release candidate reaches the installed environment through a range that merely allows one.

pip picks a pre-release whenever any requirement on a package names one (hydra-submitit-launcher declares
``hydra-core>=1.1.0.dev7``): that once installed hydra-core 1.4.0rc3 and omegaconf 2.4.1rc1. pyproject.toml and
constraints.txt keep them on their stable lines. A pre-release is accepted only where a stable parent pins exactly
that version (``==``; e.g. opentelemetry-sdk pins opentelemetry-semantic-conventions==0.66b2, a package published
only as betas): then no resolve could choose otherwise.
"""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, distribution, distributions

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PROJECT = "astra-lora"


def _requirements(dist) -> list[Requirement]:
    parsed = []
    for text in dist.requires or []:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        if requirement.marker is None or requirement.marker.evaluate({"extra": "dev"}):
            parsed.append(requirement)
    return parsed


def _closure() -> dict[str, object]:
    """Every installed distribution the project depends on, transitively (its dev extra included)."""
    seen: dict[str, object] = {}
    stack = [PROJECT]
    while stack:
        name = canonicalize_name(stack.pop())
        if name in seen:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue  # an optional dependency that is not installed
        seen[name] = dist
        stack.extend(requirement.name for requirement in _requirements(dist))
    return seen


def _pinned_exactly(name: str, version: str) -> bool:
    """Whether some installed stable distribution requires ``name==version`` exactly."""
    for dist in distributions():
        if Version(dist.version).is_prerelease:
            continue
        for requirement in _requirements(dist):
            if canonicalize_name(requirement.name) != name:
                continue
            specifiers = list(requirement.specifier)
            if any(s.operator in ("==", "===") and s.version == version for s in specifiers):
                return True
    return False


def test_no_pre_release_installed_through_a_range():
    closure = _closure()
    assert "hydra-core" in closure and "omegaconf" in closure
    offending = [f"{name}=={dist.version}" for name, dist in sorted(closure.items())
                 if Version(dist.version).is_prerelease and not _pinned_exactly(name, dist.version)]  # fmt: skip
    assert not offending, f"pre-releases installed through a version range: {offending}; pin their stable line"


def test_configuration_system_on_its_stable_lines():
    assert Version(distribution("hydra-core").version) < Version("1.4")
    assert Version(distribution("omegaconf").version) < Version("2.4")
    assert not Version(distribution("hydra-core").version).is_prerelease


def test_pins_written_where_install_reads_them():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    constraints = (root / "constraints.txt").read_text(encoding="utf-8")
    pyproject = (root / "pyproject.toml").read_text(encoding="utf-8")
    for text in (constraints, pyproject):
        assert re.search(r"hydra-core>=1\.3\.\d+,<1\.4", text) and re.search(r"omegaconf>=2\.3,<2\.4", text)
