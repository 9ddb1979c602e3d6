"""The package as a user installs it: `python -m build` makes an sdist and a wheel, and the wheel
installs with its extras into fresh virtual environments: ONNX Runtime only, without torch, runs
`tagtune predict` on an exported tagger; every extra beside an installed torch keeps that torch.

Each environment is made with pip from the package index (PyPI here), at the versions of
scripts/constraints.txt as the suite's own (none with --unpinned: make test-latest), so this module
takes a minute or two.
"""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import tagtune

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["Barack Obama visited Lisbon with Justin Bieber", "I love New York and the Yankees",
         "nothing to see here", "Watching Game of Thrones in London tonight"]


def run(args, extra_env: dict | None = None, **kw):
    """``args`` in a new process, outside this virtual environment; ``extra_env`` adds to its
    environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env={**env, **(extra_env or {})},
                          **kw)


def check(args, **kw):
    result = run(args, **kw)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result


def fresh_venv(path: Path) -> Path:
    check([sys.executable, "-m", "venv", path])
    return path / "bin"


def pip_install(bin_dir: Path, constraints: list[str], *requirements) -> None:
    """pip-install ``requirements`` into the environment of ``bin_dir``, held by ``constraints``
    (pip's -c arguments, the pip_constraints fixture)."""
    check([bin_dir / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", *constraints,
           *requirements])


def assert_pinned(bin_dir: Path, constraints: list[str]) -> None:
    """Every package in the environment of ``bin_dir`` but tagtune is at its version in the
    constraints file (where there is one)."""
    if not constraints:
        return
    def key(name):
        return name.lower().replace("_", "-")

    pins = dict(line.strip().split("==") for line in Path(constraints[1]).read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    pins = {key(name): version for name, version in pins.items()}
    frozen = check([bin_dir / "python", "-m", "pip", "freeze"]).stdout.splitlines()
    installed = [line.split("==") for line in frozen if not line.startswith("tagtune")]
    assert len(installed) > 5, frozen
    for name, version in installed:  # a local build (torch's +cpu) is the version it builds
        assert pins.get(key(name)) == version.split("+")[0], f"{name} {version}: the constraints say {pins.get(key(name))}"


@pytest.fixture(scope="module")
def dist(tmp_path_factory, pip_constraints):
    out = tmp_path_factory.mktemp("dist")
    # the isolated build environment gets its setuptools under the same constraints
    check([sys.executable, "-m", "build", "--outdir", out, ROOT], cwd=out,
          extra_env={"PIP_CONSTRAINT": pip_constraints[1]} if pip_constraints else None)
    wheels = list(out.glob("tagtune-*.whl"))
    sdists = list(out.glob("tagtune-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
    return wheels[0]


def test_wheel_holds_the_package_and_its_page(dist):
    names = zipfile.ZipFile(dist).namelist()
    assert "tagtune/apps/static/index.html" in names
    assert "tagtune/apps/cli.py" in names
    assert not [n for n in names if n.startswith("tests/")]
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [line for line in zipfile.ZipFile(dist).read(metadata).decode().splitlines()
                if line.startswith("Requires-Dist:")]
    base = [r for r in requires if "extra ==" not in r]
    assert not [r for r in base if "torch" in r], base  # torch comes with the torch / export extras only
    torch_extra = [r for r in requires if r.split(";")[0].strip().split(">")[0].strip() == "Requires-Dist: torch"]
    assert {r.split("extra ==")[1].strip(" '\"") for r in torch_extra} >= {"torch", "export"}


def test_onnx_only_install_predicts_without_torch(dist, exported, tmp_path, pip_constraints):
    folder, _ = exported
    bin_dir = fresh_venv(tmp_path / "venv")
    pip_install(bin_dir, pip_constraints, f"{dist}[onnx]")
    assert_pinned(bin_dir, pip_constraints)
    absent = run([bin_dir / "python", "-c", "import torch"])
    assert absent.returncode != 0 and "No module named 'torch'" in absent.stderr

    assert check([bin_dir / "tagtune", "--version"]).stdout.strip() == f"tagtune {tagtune.__version__}"
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "spans.jsonl"
    check([bin_dir / "tagtune", "predict", folder, texts, "-o", out, "--quiet"])
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["text"] for r in records] == TEXTS

    expected = tagtune.Tagger.load(folder, backend="onnx")(TEXTS)
    assert [[(s["start"], s["end"], s["label"]) for s in r["spans"]] for r in records] == \
        [[(s.start, s.end, s.label) for s in spans] for spans in expected]
    assert any(r["spans"] for r in records)

    # Training needs torch: one line that says how to get it, no traceback.
    result = run([bin_dir / "tagtune", "train", "--model", folder, "--train", texts, "--out", tmp_path / "run"])
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "tagtune[torch]" in result.stderr
    assert not (tmp_path / "run").exists()


def test_every_extra_installs_beside_the_users_torch(dist, minilm, tmp_path, pip_constraints):
    import torch

    bin_dir = fresh_venv(tmp_path / "venv")
    pip_install(bin_dir, pip_constraints, f"torch=={torch.__version__}")  # the user's own build, installed first
    pip_install(bin_dir, pip_constraints, f"{dist}[torch,ja,serve,onnx,export,llm]")
    assert_pinned(bin_dir, pip_constraints)
    kept = check([bin_dir / "python", "-c", "import torch; print(torch.__version__)"]).stdout.strip()
    assert kept == torch.__version__
    check([bin_dir / "python", "-c", "import tagtune.inference.export, tagtune.apps.serve, tagtune.training.loop, fugashi, unidic_lite"])
    # the llm extra: the openai client that tagtune label makes, as it makes it
    check([bin_dir / "python", "-c", "from tagtune.apps.label import client_for; "
           "assert client_for('http://127.0.0.1:11434/v1', 5.0, 2).max_retries == 2"])
    info = json.loads(check([bin_dir / "tagtune", "info", minilm]).stdout)
    assert info["architecture"] == "bert" and info["layers"] == 6
