"""The command line on good and bad input: one clear error line and a non-zero exit."""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import tiny_hf_model


def run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "tagtune", *map(str, args)], capture_output=True,
                          text=True, input=stdin, timeout=120)


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
