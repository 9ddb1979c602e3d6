"""The suite's own environment: the versions it runs on are those of scripts/constraints.txt, and a
browser test without a browser skips locally but fails under CI."""

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib", reason="Python 3.11 reads pyproject.toml")

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "scripts" / "constraints.txt"


def pins() -> dict[str, str]:
    lines = [line.strip() for line in CONSTRAINTS.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert all(line.count("==") == 1 for line in lines), "one name==version a line"
    return {canonicalize_name(name): version for name, version in (line.split("==") for line in lines)}


def requirements(extra: str = "dev") -> list[Requirement]:
    """The requirements of tagtune's ``extra``, the extras it names followed."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = []
    for line in project["optional-dependencies"][extra]:
        requirement = Requirement(line)
        if requirement.name == "tagtune":
            for name in requirement.extras:
                found += requirements(name)
        else:
            found.append(requirement)
    return found + ([Requirement(r) for r in project["dependencies"]] if extra == "dev" else [])


def test_every_requirement_is_pinned_within_its_range():
    pinned = pins()
    wanted = requirements()
    assert len(wanted) > 15 and "transformers" in {r.name for r in wanted}
    for requirement in wanted:
        version = pinned.get(canonicalize_name(requirement.name))
        assert version, f"{requirement.name} is not in {CONSTRAINTS.name}"
        assert requirement.specifier.contains(version), f"{requirement.name}=={version} is outside {requirement}"


def test_the_suite_runs_on_the_pinned_versions(pytestconfig):
    if pytestconfig.getoption("--unpinned"):
        pytest.skip("--unpinned: the newest releases")
    pinned = pins()
    names = [canonicalize_name(r.name) for r in requirements()] + ["tokenizers", "huggingface-hub", "numpy"]
    for name in dict.fromkeys(names):
        installed = metadata.version(name).split("+")[0]  # torch's +cpu is a build of the same version
        assert installed == pinned[name], f"{name} {installed} is installed, {pinned[name]} pinned: run scripts/setup.sh"


BROWSER_TEST = """
import sys
sys.path.insert(0, {tests!r})
from helpers import chromium


def test_browser():
    chromium()
"""


@pytest.mark.parametrize("ci", ["true", ""])
def test_a_browser_test_without_chromium(tmp_path, ci):
    """No Chromium on PATH and none of Playwright's own: skipped with the reason, or failed where
    CI is set."""
    (tmp_path / "test_browser.py").write_text(BROWSER_TEST.format(tests=str(ROOT / "tests")))
    (tmp_path / "browsers").mkdir()
    env = dict(os.environ, CI=ci, PATH=str(tmp_path / "bin"), PLAYWRIGHT_BROWSERS_PATH=str(tmp_path / "browsers"))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "test_browser.py"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    out = result.stdout
    if ci:
        assert result.returncode == 1, out
        assert "1 failed" in out and "the browser tests cannot run: no Chromium: none of chromium," in out, out
    else:
        assert result.returncode == 0, out
        assert "1 skipped" in out and "no Chromium: none of chromium, chromium-browser" in out, out


def test_chromium_is_found_by_its_other_names(tmp_path, monkeypatch):
    import helpers

    (tmp_path / "google-chrome").write_text("#!/bin/sh\n")
    (tmp_path / "google-chrome").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert helpers.find_chromium.__wrapped__() == (str(tmp_path / "google-chrome"), "")
