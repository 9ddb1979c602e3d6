"""The command line on good and bad input: one clear error line and a non-zero exit."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from conftest import tiny_hf_model
from helpers import tagtune as run


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tagtune: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_info_describes_a_real_model(minilm):
    result = run("info", minilm)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["architecture"], info["layers"], info["hidden_size"]) == ("bert", 6, 384)
    assert info["dropped_weights"] == ["pooler.dense.bias", "pooler.dense.weight"]


def test_tokenize_prints_offsets_into_the_text(minilm):
    result = run("tokenize", minilm, stdin="Zürich Café\n")
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout)
    assert [(t["token"], line["text"][t["start"]:t["end"]]) for t in line["tokens"]] == [
        ("zurich", "Zürich"), ("cafe", "Café")]


@pytest.fixture
def model_copy(minilm, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(minilm, folder)
    return folder


def test_folder_without_weights(model_copy):
    (model_copy / "model.safetensors").unlink()
    assert_one_line_error(run("info", model_copy), str(model_copy), "no weights found")


def test_unsupported_architecture_lists_the_supported(model_copy):
    config = json.loads((model_copy / "config.json").read_text())
    config["model_type"] = "gpt2"
    (model_copy / "config.json").write_text(json.dumps(config))
    assert_one_line_error(run("info", model_copy), "'gpt2' is not supported",
                          "bert, roberta, xlm-roberta, electra, distilbert")


def test_truncated_safetensors(model_copy):
    path = model_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    assert_one_line_error(run("info", model_copy), "model.safetensors: not a readable safetensors file")


def test_vocab_larger_than_the_embedding(tmp_path, minilm):
    tiny_hf_model("bert").save_pretrained(tmp_path)  # 99-row embedding
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(minilm / name, tmp_path / name)  # 30,522-token vocabulary
    assert_one_line_error(run("info", tmp_path), "tokenizer has ids up to 30521", "99 rows")


def test_missing_folder_and_bad_config_json(tmp_path):
    assert_one_line_error(run("info", tmp_path / "nowhere"), "no such folder")
    (tmp_path / "config.json").write_text('{"model_type": "bert",\n "hidden_size": }')
    assert_one_line_error(run("info", tmp_path), "config.json:2: not valid JSON")


def project_version():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    return re.search(r'^version = "([^"]+)"', text, re.M).group(1)


def test_version_is_the_project_version(monkeypatch):
    import importlib.metadata

    import tagtune
    from tagtune.apps.cli import version

    result = run("--version")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == f"tagtune {project_version()}\n"
    assert tagtune.__version__ == project_version()

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert version() == tagtune.__version__


def test_help_says_what_tagtune_is_with_examples():
    from tagtune.apps import cli

    result = run("--help")
    assert result.returncode == 0
    assert cli.DESCRIPTION in result.stdout and "The command line" not in result.stdout
    examples = result.stdout.split("examples:\n", 1)[1].splitlines()
    for command in ("train", "predict", "serve", "export"):
        assert any(line.startswith("  ") and f"tagtune {command} " in line for line in examples), command
    parser = cli.build_parser()
    commands = next(a.choices for a in parser._actions if isinstance(a.choices, dict))
    assert set(commands) == {"info", "tokenize", "train", "evaluate", "predict", "serve", "annotate", "select",
                             "export", "label", "score", "push", "merge"}
    for name, command in commands.items():  # each command's --help starts with what it does
        assert command.description and command.description[0].isupper() and command.description.endswith("."), name
        for action in command._actions:  # and states a default at most once per option
            assert (action.help or "").count("(default") <= 1, (name, action.dest)


def option_helps(help_text: str) -> dict[str, str]:
    """Each option's entry in a --help text, on one line, by its first option string."""
    entries, current = {}, None
    for line in help_text.splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            entries[current] = line
        elif current and line.startswith("      "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return {option: " ".join(text.split()) for option, text in entries.items()}


def test_option_defaults_come_from_the_library(cli):
    """train's --help states TrainConfig's defaults (its options stay None, "not given", for
    --resume); serve's options default to Limits' and serve()'s own."""
    import dataclasses
    import inspect

    from tagtune.apps.cli import build_parser
    from tagtune.apps.serve import Limits, serve
    from tagtune import TrainConfig

    result = cli("train", "--help")
    assert result.returncode == 0
    helps = option_helps(result.stdout)
    shown = 0
    for field in dataclasses.fields(TrainConfig):
        option = "--" + field.name.replace("_", "-")
        if option in helps and field.default not in (None, True, False, dataclasses.MISSING):
            stated = re.findall(r"\(default ([^)]*)\)", helps[option])
            assert len(stated) == 1 and type(field.default)(stated[0]) == field.default, (option, stated)
            shown += 1
    assert shown >= 12
    assert "(default" not in helps["--max-tokens"] and "(default" not in helps["--dev-fraction"]
    args = build_parser().parse_args(["train", "--out", "o"])
    assert args.epochs is None and args.lr is None and args.scheme is None

    args = build_parser().parse_args(["serve", "a-tagger"])
    limits = Limits()
    assert (args.max_texts, args.max_chars, args.max_total_chars, args.max_body) == (
        limits.max_texts, limits.max_chars, limits.max_total_chars, limits.max_body)
    signature = inspect.signature(serve).parameters
    for name in ("host", "port", "batch_texts", "timeout", "max_queue", "min_score"):
        assert getattr(args, name) == signature[name].default, name
    assert args.batch_wait_ms == signature["batch_wait"].default * 1000
    helps = option_helps(cli("serve", "--help").stdout)
    assert f"(default {limits.max_texts})" in helps["--max-texts"] and "(default 5;" not in helps["--batch-wait-ms"]


def test_main_restores_showwarning(monkeypatch, capsys):
    """main() turns warnings into `tagtune: warning:` lines while it runs and leaves the process as
    it found it, whether the command succeeds, fails or raises."""
    import warnings

    from tagtune.apps import cli
    from tagtune import TagtuneError

    def warn_then(outcome):
        def command(args):
            warnings.warn("some keywords never occur")
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        return command

    before = warnings.showwarning
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        for outcome, code in ((0, 0), (TagtuneError("bad file"), 1)):
            monkeypatch.setattr(cli, "cmd_info", warn_then(outcome))
            assert cli.main(["info", "anything"]) == code
            assert capsys.readouterr().err.splitlines()[0] == "tagtune: warning: some keywords never occur"
            assert warnings.showwarning is before
        monkeypatch.setattr(cli, "cmd_info", warn_then(RuntimeError("a bug")))
        with pytest.raises(RuntimeError):
            cli.main(["info", "anything"])
        assert warnings.showwarning is before


@pytest.mark.parametrize("command", ["predict", "serve"])
@pytest.mark.parametrize("value", ["1.01", "-0.5", "nan", "inf"])
def test_min_score_outside_0_to_1_is_one_line(cli, command, value, tmp_path):
    """--min-score is checked before anything is loaded, read or written."""
    (tmp_path / "in.txt").write_text("Barack Obama\n")
    extra = [tmp_path / "in.txt", "-o", tmp_path / "out.jsonl"] if command == "predict" else ["--port", "0"]
    result = cli(command, tmp_path / "no-tagger", *extra, "--min-score", value)
    assert result.returncode == 1 and result.stdout == ""
    assert_one_line_error(result, "min-score must be a number from 0 to 1, got")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


FREED_BLOCK_FAULTS = """
import ctypes, resource, sys
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
if sys.argv[1] == "keep":
    from tagtune.apps.cli import keep_freed_memory
    keep_freed_memory()
size, faults = 48 << 20, []
for _ in range(3):  # a 48 MB block written, freed and taken again, as a training step's activations are
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(faults[1] + faults[2])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_batch_commands_keep_freed_memory_for_the_next_step():
    """After keep_freed_memory (train and predict call it), a freed block is taken again
    without page faults; by default glibc maps and unmaps it every time (12,288 faults)."""
    def faults(mode: str) -> int:
        result = subprocess.run([sys.executable, "-c", FREED_BLOCK_FAULTS, mode], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return int(result.stdout)

    assert faults("default") > 2 * 12000
    assert faults("keep") < 200
