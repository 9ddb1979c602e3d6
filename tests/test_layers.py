"""The import rule of pyproject.toml's [tool.importlinter]: the stages import downwards (apps,
training, inference, models, store, data, text, the kernel at the root), imports inside
functions included; the commands never import each other; and no module imports itself back
through others."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

import tagtune

ROOT = Path(__file__).resolve().parents[1]
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def lint(project: Path, src: Path):
    """lint-imports on ``project``'s pyproject.toml, importing tagtune from ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    return subprocess.run([sys.executable, "-c", LINT, "--no-cache", "--config", str(project / "pyproject.toml")],
                          cwd=project, env=env, capture_output=True, text=True, timeout=120)


def test_the_stages_import_downwards():
    result = lint(ROOT, Path(tagtune.__file__).parents[1])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, line, broken", [
    # a low stage reaching up from inside a function
    ("data/schemes.py", "def _up():\n    from tagtune.training.loop import train\n", "Stages import downwards"),
    # the kernel reaching into a stage
    ("files.py", "from tagtune.text.tokenizer import load_tokenizer\n", "Stages import downwards"),
    # one command importing another
    ("apps/select.py", "from tagtune.apps.serve import Limits\n", "No command imports another"),
])
def test_a_forbidden_import_breaks_the_rule(tmp_path, module, line, broken):
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(Path(tagtune.__file__).parent, tmp_path / "src" / "tagtune",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "src" / "tagtune" / module, "a", encoding="utf-8") as f:
        f.write("\n\n" + line)
    result = lint(tmp_path, tmp_path / "src")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{broken} BROKEN" in result.stdout
    importer = "tagtune." + module.removesuffix(".py").replace("/", ".")
    assert importer in result.stdout


def test_no_import_circle():
    """Tarjan's strongly connected components of the module graph (imports inside functions and
    under TYPE_CHECKING included): each is one module."""
    graph = grimp.build_graph("tagtune", cache_dir=None)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = [stack.pop()]
            while component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    assert circles == []
