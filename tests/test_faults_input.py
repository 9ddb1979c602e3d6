"""Hostile or broken input: config.json, annotation files, predict's input and its output file.

Each case ends in one line, ``tagtune: error: ...``, a non-zero exit status and no traceback; none
tries to allocate more memory than the machine has, and none changes a file the user had. The
absurd configs run in a subprocess under a 4 GB address-space limit, so that a regression fails
fast instead of taking the machine's memory.
"""

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import tiny_hf_model
from helpers import tagtune as run_tagtune
from tagtune.models.config import EncoderConfig, check_memory, read_config
from tagtune.data.formats import read_examples
from tagtune import TagtuneError
from tagtune.apps.predict import read_records

MEMORY_LIMIT = 4 << 30
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
LABELS = ["O", "B-X", "I-X"]


def tagtune(*args, memory: int | None = MEMORY_LIMIT, file_size: int | None = None):
    """Run the CLI in a subprocess, its address space limited to ``memory`` bytes and its files
    to ``file_size`` bytes (with SIGXFSZ ignored, a write past it fails with EFBIG)."""

    def limits():
        if memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        if file_size is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    return run_tagtune(*args, timeout=120, env=ENV, preexec_fn=limits)


def one_line_error(result, *fragments) -> str:
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tagtune: error: "), result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def raises(function, *args, **kwargs) -> str:
    with pytest.raises(TagtuneError) as info:
        function(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    return message


# --------------------------------------------------------------------------- config.json


@pytest.fixture
def base_config(tiny_bert) -> dict:
    return json.loads((tiny_bert / "config.json").read_text(encoding="utf-8"))


def model_with(tiny_bert, folder, change: dict):
    """A copy of the tiny BERT (weights, tokenizer) whose config.json has ``change`` applied."""
    shutil.copytree(tiny_bert, folder)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config.update(change)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


DISTILBERT = {"model_type": "distilbert", "vocab_size": 100, "dim": 32, "n_layers": 2, "n_heads": 4,
              "hidden_dim": 64}


@pytest.mark.parametrize("change, fragments", [
    ({"hidden_size": 2**20}, ["hidden_size is 1048576", "an integer from 1 to 65,536"]),
    ({"vocab_size": 10**12}, ["vocab_size is 1000000000000", "from 1 to 10,000,000"]),
    ({"num_hidden_layers": 100_000}, ["num_hidden_layers is 100000", "from 0 to 512"]),
    ({"max_position_embeddings": 10**9}, ["max_position_embeddings is 1000000000", "1,048,576"]),
    ({"intermediate_size": -1}, ["intermediate_size is -1", "from 1 to 262,144"]),
    ({"type_vocab_size": 5000}, ["type_vocab_size is 5000", "from 0 to 1,024"]),
    ({"num_attention_heads": 0}, ["num_attention_heads is 0", "from 1 to"]),
    ({"embedding_size": 0}, ["embedding_size is 0"]),
    ({"num_labels": 10**6}, ["num_labels is 1000000", "from 0 to 100,000"]),
    ({"hidden_size": 32.0}, ["hidden_size is 32.0; it must be an integer"]),
    ({"hidden_size": "32"}, ["hidden_size is the string '32'; it must be an integer"]),
    ({"num_hidden_layers": True}, ["num_hidden_layers is true; it must be an integer"]),
    ({"vocab_size": None}, ["vocab_size is null"]),
    ({"vocab_size": [30522]}, ["vocab_size is a list"]),
    ({"num_attention_heads": 5}, ["hidden size 32 is not divisible by 5 heads"]),
    ({"layer_norm_eps": 0}, ["layer_norm_eps is 0; it must be a number above 0 and below 1"]),
    ({"layer_norm_eps": "1e-12"}, ["layer_norm_eps is the string '1e-12'"]),
    ({"hidden_dropout_prob": 3}, ["hidden_dropout_prob is 3; it must be a number from 0 to 1"]),
    ({"pad_token_id": 40_000}, ["pad_token_id 40000 is not a row of the word embedding (vocab_size 30522)"]),
    ({"model_type": ["bert"]}, ["model_type ['bert'] is not supported"]),
    ({"model_type": "x" * 10_000}, ["model_type 'xxxxxxxxx", "…"]),
    ({"hidden_act": "y" * 10_000}, ["activation 'yyyyyyy", "…"]),
    ({**DISTILBERT, "dim": 2**17}, ["dim is 131072", "from 1 to 65,536"]),
    ({**DISTILBERT, "n_layers": 1.5}, ["n_layers is 1.5"]),
    ({**DISTILBERT, "n_heads": 5}, ["hidden size 32 is not divisible by 5 heads"]),
    ({**DISTILBERT, "hidden_dim": 0}, ["hidden_dim is 0"]),
])
def test_config_sizes_are_checked(base_config, tmp_path, change, fragments):
    config = DISTILBERT if change.get("model_type") == "distilbert" else base_config
    (tmp_path / "config.json").write_text(json.dumps({**config, **change}), encoding="utf-8")
    message = raises(read_config, tmp_path)
    assert message.startswith(f"{tmp_path / 'config.json'}: "), message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("content, fragments", [
    (b'{"model_type": "bert",\n "note": "caf\xe9"}', [":2: not UTF-8 text (byte 0xe9)"]),
    (b'{"model_type": "bert",\n "hidden_size": }', [":2: not valid JSON"]),
    (b"[" * 100_000, [":1: lists and objects nested more than 100 deep"]),
    (b'{"model_type": "bert",\n "x": ' + b"[" * 101 + b"]" * 101 + b"}", [":2: lists and objects nested more"]),
    (b'{"model_type": "bert",\n\n "vocab_size": ' + b"9" * 100_000 + b"}",
     [":3: the number 9999999999999999999999999999999999999999… is 100,000 characters long (at most 100)"]),
    (b'{"model_type": "bert",\n "layer_norm_eps": NaN}', [":2: NaN is not a JSON number"]),
    (b'{"model_type": "bert",\n "layer_norm_eps": -Infinity}', [":2: -Infinity is not a JSON number"]),
    (b'{"model_type": "bert",\n "layer_norm_eps": 1e999}', [":2: the number 1e999 is out of range"]),
    (b"[1, 2]", [": expected a JSON object, got a list"]),
    (b'"bert"', [": expected a JSON object, got the string 'bert'"]),
])
def test_config_json_that_is_not_a_config(tmp_path, content, fragments):
    (tmp_path / "config.json").write_bytes(content)
    message = raises(read_config, tmp_path)
    assert message.startswith(str(tmp_path / "config.json")), message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("change, fragment", [
    ({"id2label": ["O", "B-X"]}, 'id2label is a list; it must be an object mapping ids ("0", "1", ...)'),
    ({"id2label": {"0": "O", "2": "B-X"}}, "id2label has the key '2'; its keys must be the ids 0 to 1"),
    ({"id2label": {"zero": "O"}}, "id2label has the key 'zero'"),
    ({"id2label": {"0": "O", "00": "B-X"}}, "id2label gives id 0 twice"),
    ({"id2label": {"0": ["O"]}}, "id2label['0'] is a list, not a label name"),
    ({"id2label": {"0": "O", "1": "O"}}, "id2label names 'O' twice (ids 0 and 1)"),
    ({"id2label": {str(i): f"L{i}" for i in range(100_001)}}, "id2label has 100,001 labels (at most 100,000)"),
    ({"label2id": "O"}, "label2id is the string 'O'; it must be an object"),
    ({"label2id": {"O": "0"}}, "label2id['O'] is the string '0', not an integer id"),
])
def test_malformed_labels(base_config, tmp_path, change, fragment):
    (tmp_path / "config.json").write_text(json.dumps({**base_config, **change}), encoding="utf-8")
    message = raises(read_config, tmp_path)
    assert message.startswith(f"{tmp_path / 'config.json'}: "), message
    assert fragment in message, message


@pytest.mark.parametrize("kind", ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "modernbert"])
def test_the_memory_estimate_counts_every_parameter(kind):
    reference = tiny_hf_model(kind, num_labels=5)  # transformers' token classifier: the same parameters
    config = EncoderConfig.from_hf_dict(reference.config.to_dict())
    assert config.num_labels == 5
    assert config.parameter_count() == sum(p.numel() for p in reference.parameters())


def test_memory_message_names_the_need_and_the_limit(base_config):
    big = {**base_config, "hidden_size": 16_384, "num_attention_heads": 128, "num_hidden_layers": 512,
           "intermediate_size": 65_536}
    config = EncoderConfig.from_hf_dict(big, "m/config.json")
    message = raises(check_memory, config, "m/config.json", limit=(24 * 10**9, "this machine has {}"))
    assert re.fullmatch(r"m/config\.json: this model \(512 layers of width 16,384, vocab_size 30,522\) has about "
                        r"1\.6 trillion parameters and would need about 6\.6 TB of memory for its weights; "
                        r"this machine has 24 GB", message), message
    small = EncoderConfig.from_hf_dict(base_config)  # 1.0 million parameters: 4.1 MB, 16 MB to train
    check_memory(small, "m/config.json", limit=(5 * 10**6, "this machine has {}"))
    message = raises(check_memory, small, "m/config.json", training=True, limit=(5 * 10**6, "cuda:0 has {}"))
    assert "would need about 16 MB of memory to train (weights, gradients and AdamW state" in message
    assert message.endswith("; cuda:0 has 5.0 MB"), message


@pytest.mark.parametrize("change, fragments", [
    # Each of these used to allocate until memory ran out (or tried 128 GB at once).
    ({"hidden_size": 2**20}, ["hidden_size is 1048576; it must be an integer from 1 to 65,536"]),
    ({"num_hidden_layers": 100_000}, ["num_hidden_layers is 100000; it must be an integer from 0 to 512"]),
    # Within the bounds, but 6.6 TB of weights: the memory check, not an allocation, says no.
    ({"hidden_size": 16_384, "num_attention_heads": 128, "num_hidden_layers": 512, "intermediate_size": 65_536},
     ["would need about 6.6 TB of memory for its weights; this process may use 4.3 GB (ulimit -v)"]),
])
def test_absurd_configs_stop_before_allocating(tiny_bert, tmp_path, change, fragments):
    folder = model_with(tiny_bert, tmp_path / "model", change)
    one_line_error(tagtune("info", folder), f"{folder / 'config.json'}: ", *fragments)


def test_training_needs_four_times_the_weights(tiny_bert, tmp_path):
    """2.7 GB of weights fit in 4 GB; weights, gradients and AdamW state (11 GB) do not."""
    folder = model_with(tiny_bert, tmp_path / "model", {"hidden_size": 2048, "num_attention_heads": 16,
                                                        "num_hidden_layers": 12, "intermediate_size": 8192})
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"text": "Tokyo is big", "spans": [[0, 5, "LOC"]]}) + "\n", encoding="utf-8")
    result = tagtune("train", "--model", folder, "--train", train, "--out", tmp_path / "out", "--device", "cpu",
                     "--quiet")
    one_line_error(result, f"{folder / 'config.json'}: ", "would need about 11 GB of memory to train",
                   "this process may use 4.3 GB (ulimit -v)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, fragment", [
    ("[1]", ": expected a JSON object"),
    ('{"scheme": "BIO",\n "x": ' + "[" * 100_000 + "}", ":2: lists and objects nested more than 100 deep"),
    ('{"max_length": "128"}', ": max_length is '128', not an integer"),
    ('{"all_subwords": 1}', ": all_subwords is 1, not true or false"),
    ('{"scheme": ["BIO"]}', ": scheme is ['BIO'], not a string"),
    ('{"max_length": 10, "stride": 8}', ": max_length 10 and stride 8 must be"),
    ('{"max_length": 1e999}', ":1: the number 1e999 is out of range"),
])
def test_broken_tagtune_json(tmp_path, content, fragment):
    from tagtune.store.layout import TaggerSettings

    (tmp_path / "tagtune.json").write_text(content, encoding="utf-8")
    message = raises(TaggerSettings.read, tmp_path, LABELS)
    assert message.startswith(f"{tmp_path / 'tagtune.json'}") and fragment in message, message


def test_windows_longer_than_the_position_embedding(tiny_bert, base_config, tmp_path):
    """A window the model has no positions for would index past its position embedding."""
    from tagtune.store.layout import TaggerSettings

    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps({"text": "Tokyo is big", "spans": [[0, 5, "LOC"]]}) + "\n", encoding="utf-8")
    result = tagtune("train", "--model", tiny_bert, "--train", train, "--out", tmp_path / "out", "--device", "cpu",
                     "--max-length", "1000", "--quiet")
    one_line_error(result, "--max-length 1000 is more than the model's 512 positions (max_position_embeddings "
                           "512 in its config.json)")
    assert not (tmp_path / "out").exists()
    (tmp_path / "tagtune.json").write_text('{"max_length": 600}', encoding="utf-8")
    roberta = EncoderConfig.from_hf_dict({**base_config, "model_type": "roberta", "pad_token_id": 1})
    message = raises(TaggerSettings.read, tmp_path, LABELS, roberta)
    assert message == (f"{tmp_path / 'tagtune.json'}: max_length 600 is more than the model's 510 positions "
                       "(max_position_embeddings 512 in its config.json)")


# --------------------------------------------------------------------------- annotation files

DEEP = "[" * 100_000  # unbalanced: Python's json recurses until RecursionError
NESTED = "[" * 101 + "0" + "]" * 101  # valid JSON, one level too deep
HUGE = "7" * 100_000  # beyond Python's 4,300-digit int conversion
RECORDS = {  # the value goes where a start offset (or a keyword) belongs, on line 2
    "spans.jsonl": '{"text": "Tokyo", "spans": []}\n{"text": "Tokyo", "spans": [{"start": %s, "end": 5, "label": "LOC"}]}\n',
    "doccano.jsonl": '{"text": "Tokyo", "label": []}\n{"text": "Tokyo", "label": [[%s, 5, "LOC"]]}\n',
    "keywords.jsonl": '{"text": "Tokyo", "keywords": []}\n{"text": "Tokyo", "keywords": [%s]}\n',
    "export.json": '[{"data": {"text": "Tokyo"}, "annotations": [{"result": []}]},\n {"data": {"text": "Tokyo"}, '
                   '"annotations": [{"result": [{"type": "labels", "value": {"start": %s, "end": 5, '
                   '"labels": ["LOC"]}}]}]}]\n',
}


@pytest.mark.parametrize("name", RECORDS)
@pytest.mark.parametrize("value, fragment", [
    (DEEP, "lists and objects nested more than 100 deep"),
    (NESTED, "lists and objects nested more than 100 deep"),
    (HUGE, "the number 7777777777777777777777777777777777777777… is 100,000 characters long (at most 100)"),
    ("-" + "7" * 500, "the number -777777777777777777777777777777777777777… is 501 characters long"),
    ("NaN", "NaN is not a JSON number"),
    ("Infinity", "Infinity is not a JSON number"),
    ("-Infinity", "-Infinity is not a JSON number"),
    ("1e999", "the number 1e999 is out of range"),
    ('"\\ud800"', "the escape \\ud800 is half of a surrogate pair"),
])
def test_json_bounds_in_every_annotation_format(tmp_path, name, value, fragment):
    path = tmp_path / name
    path.write_text(RECORDS[name] % value, encoding="utf-8")
    message = raises(read_examples, path)
    assert message.startswith(f"{path}:2: "), message
    assert fragment in message, message


def test_offsets_past_the_end_and_long_values_are_cut_short(tmp_path):
    path = tmp_path / "spans.jsonl"
    path.write_text(json.dumps({"text": "Tokyo", "spans": [[0, 10**60, "LOC"]]}) + "\n", encoding="utf-8")
    assert raises(read_examples, path) == (f"{path}:1: spans[0] end 1000000000000000000000000000000000000000… "
                                           "is past the end of the text (5 characters)")
    path.write_text(json.dumps({"text": "Tokyo", "spans": [[0, 5, "L" * 100_000]]}) + "\n", encoding="utf-8")
    message = raises(read_examples, path, labels={"LOC"})
    assert f"has unknown label '{'L' * 39}…" in message
    path = tmp_path / "export.json"
    path.write_text(json.dumps([{"id": "i" * 100_000, "data": {"text": 5}}]), encoding="utf-8")
    assert raises(read_examples, path).startswith(f"{path}:1: task '{'i' * 39}…: ")
    path = tmp_path / "train.conll"
    path.write_text("Tokyo B-LOC\n" + "x" * 100_000 + "\n", encoding="utf-8")
    assert raises(read_examples, path) == (f"{path}:2: token '{'x' * 39}… has no tag (a line needs the token "
                                           "first and its tag last)")


def test_train_on_deeply_nested_json_is_one_line(tiny_bert, tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text(RECORDS["spans.jsonl"] % DEEP, encoding="utf-8")
    result = tagtune("train", "--model", tiny_bert, "--train", train, "--out", tmp_path / "out", "--quiet")
    one_line_error(result, f"{train}:2: lists and objects nested more than 100 deep")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- predict's input


@pytest.mark.parametrize("value, fragment", [
    (DEEP, "lists and objects nested more than 100 deep"),
    (NESTED, "lists and objects nested more than 100 deep"),
    (HUGE, "the number 7777777777777777777777777777777777777777… is 100,000 characters long"),
    ("NaN", "NaN is not a JSON number"),
    ("1e999", "the number 1e999 is out of range"),
    ('"\\udfff"', "the escape \\udfff is half of a surrogate pair"),
])
def test_predict_jsonl_bounds(value, fragment):
    lines = [(1, '{"text": "one"}'), (2, ""), (3, '{"text": "two", "id": %s}' % value)]
    message = raises(list, read_records(iter(lines), "texts.jsonl", "jsonl"))
    assert message.startswith("texts.jsonl:3: ") and fragment in message, message


# --------------------------------------------------------------------------- predict's output file


@pytest.fixture(scope="module")
def tagger_dir(tiny_bert, tmp_path_factory):
    import torch

    from tagtune.models.checkpoint import load_model, save_model
    from tagtune.text.tokenizer import load_tokenizer

    torch.manual_seed(3)
    model, _ = load_model(tiny_bert, labels=LABELS)
    return save_model(model, load_tokenizer(tiny_bert), tmp_path_factory.mktemp("faults") / "tagger")


def texts(path, n, bad_line=None):
    lines = [json.dumps({"text": f"text number {i} about Lisbon and Paris"}) for i in range(n)]
    if bad_line is not None:
        lines[bad_line - 1] = '{"text": "cut short'
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def assert_kept(folder, expected: dict):
    """``folder`` holds exactly ``expected`` (name: bytes, or None for any content): no temporary
    file is left, and earlier files are byte-for-byte as they were."""
    assert sorted(os.listdir(folder)) == sorted(expected)
    for name, content in expected.items():
        if content is not None:
            assert (folder / name).read_bytes() == content, name


EARLIER = b'{"text": "an earlier result", "spans": []}\n'


def test_bad_input_midway_leaves_the_earlier_output(tagger_dir, tmp_path):
    source = texts(tmp_path / "in.jsonl", 3000, bad_line=3000)
    out = tmp_path / "out.jsonl"
    out.write_bytes(EARLIER)
    result = tagtune("predict", tagger_dir, source, "-o", out, "--overwrite", "--batch-texts", "500", "--quiet")
    one_line_error(result, f"{source}:3000: not valid JSON")
    assert_kept(tmp_path, {"in.jsonl": None, "out.jsonl": EARLIER})


def test_a_full_disk_leaves_the_earlier_output(tagger_dir, tmp_path):
    source = texts(tmp_path / "in.jsonl", 2000)
    out = tmp_path / "out.jsonl"
    out.write_bytes(EARLIER)
    result = tagtune("predict", tagger_dir, source, "-o", out, "--overwrite", "--batch-texts", "200", "--quiet",
                     file_size=64 << 10)
    one_line_error(result, f"{out}: cannot be written (File too large)")
    assert_kept(tmp_path, {"in.jsonl": None, "out.jsonl": EARLIER})


def test_an_interrupt_leaves_the_earlier_output(tagger_dir, tmp_path):
    source = texts(tmp_path / "in.jsonl", 50_000)
    out = tmp_path / "out.jsonl"
    out.write_bytes(EARLIER)
    process = subprocess.Popen([sys.executable, "-m", "tagtune", "predict", str(tagger_dir), str(source), "-o",
                                str(out), "--overwrite", "--batch-texts", "100", "--quiet"],
                               stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 60
        while not any(name.endswith(".partial") and (tmp_path / name).stat().st_size > 0
                      for name in os.listdir(tmp_path)):  # predicting, partway through
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        err = process.communicate(timeout=60)[1]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130 and err == "tagtune: interrupted\n", err
    assert_kept(tmp_path, {"in.jsonl": None, "out.jsonl": EARLIER})


@pytest.mark.parametrize("kind", ["symlink", "dangling symlink", "fifo", "device"])
def test_output_that_is_not_a_regular_file_is_refused(tagger_dir, tmp_path, kind):
    source = texts(tmp_path / "in.jsonl", 3)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(EARLIER)
    out = tmp_path / "out.jsonl"
    if kind == "symlink":
        out.symlink_to(victim)
    elif kind == "dangling symlink":
        out.symlink_to(tmp_path / "nowhere.txt")
    elif kind == "fifo":
        os.mkfifo(out)
    else:
        out = "/dev/null"
    what = {"symlink": "is a symbolic link", "dangling symlink": "is a symbolic link",
            "fifo": "is a named pipe (FIFO), not a regular file", "device": "is a device, not a regular file"}[kind]
    one_line_error(tagtune("predict", tagger_dir, source, "-o", out, "--overwrite", "--quiet"), f"{out}: {what}")
    assert victim.read_bytes() == EARLIER
    assert not (tmp_path / "nowhere.txt").exists()
    assert sorted(os.listdir(tmp_path)) == sorted(["in.jsonl", "victim.txt"] + (["out.jsonl"] if kind != "device"
                                                                                else []))


def test_output_is_written_beside_under_a_fresh_name(tagger_dir, tmp_path):
    """A link planted where the temporary file used to be (OUT.partial) is not followed, the
    output replaces the earlier one whole, with the earlier one's mode, and nothing is left."""
    source = texts(tmp_path / "in.jsonl", 40)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(EARLIER)
    out = tmp_path / "out.jsonl"
    out.write_bytes(EARLIER)
    os.chmod(out, 0o640)
    (tmp_path / "out.jsonl.partial").symlink_to(victim)
    result = tagtune("predict", tagger_dir, source, "-o", out, "--overwrite", "--batch-texts", "7", "--quiet")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    lines = out.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["text"] for line in lines] == [f"text number {i} about Lisbon and Paris" for i in range(40)]
    assert oct(os.stat(out).st_mode & 0o777) == oct(0o640)
    assert_kept(tmp_path, {"in.jsonl": None, "out.jsonl": None, "victim.txt": EARLIER, "out.jsonl.partial": None})
    assert os.readlink(tmp_path / "out.jsonl.partial") == str(victim)
