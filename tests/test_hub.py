"""Models and taggers from the Hugging Face Hub, against a stand-in Hub on 127.0.0.1 (hub_server).

Each command runs in a subprocess with its own HF_HOME and HF_ENDPOINT, as a user runs it
(huggingface_hub reads its settings when it is imported); the server's log shows what was sent.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hub_server import TOKEN, HubServer

TOKENIZER = ["special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"]
CLUTTER = ["README.md", "tf_model.h5", "flax_model.msgpack", "rust_model.ot", "model.onnx", "onnx/model.onnx",
           "openvino/openvino_model.xml"]


def _copy_tokenizer(source: Path, folder: Path) -> None:
    for name in TOKENIZER:
        shutil.copy(source / name, folder / name)


def _write(folder: Path, names) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"not read by tagtune: " + name.encode())


@pytest.fixture(scope="module")
def repos(tmp_path_factory, tiny_bert):
    """Folders served as repos: a BERT with other frameworks' files around it, the same BERT
    sharded, a token classifier with tagtune.json, an ONNX-only tagger, a TensorFlow-only repo."""
    import transformers as T

    root = tmp_path_factory.mktemp("repos")
    bert = root / "bert"
    shutil.copytree(tiny_bert, bert)
    _write(bert, CLUTTER)

    sharded = root / "bert-sharded"
    T.BertModel.from_pretrained(tiny_bert).save_pretrained(sharded, max_shard_size="1MB")
    _copy_tokenizer(tiny_bert, sharded)

    tagger = root / "tagger"
    config = T.BertConfig.from_pretrained(tiny_bert, num_labels=3, id2label={0: "O", 1: "B-PER", 2: "I-PER"},
                                          label2id={"O": 0, "B-PER": 1, "I-PER": 2})
    torch.manual_seed(0)
    T.BertForTokenClassification(config).save_pretrained(tagger)
    _copy_tokenizer(tiny_bert, tagger)
    (tagger / "tagtune.json").write_text(json.dumps({"scheme": "BIO", "max_length": 64, "stride": 16}))
    _write(tagger, ["README.md"])

    onnx = root / "onnx-tagger"
    onnx.mkdir()
    for name in ("config.json", "tagtune.json"):
        shutil.copy(tagger / name, onnx / name)
    _copy_tokenizer(tiny_bert, onnx)
    _write(onnx, ["model.onnx", "README.md"])

    tf_only = root / "tf-only"
    tf_only.mkdir()
    shutil.copy(tiny_bert / "config.json", tf_only / "config.json")
    _copy_tokenizer(tiny_bert, tf_only)
    _write(tf_only, ["tf_model.h5", "README.md"])
    return SimpleNamespace(bert=bert, sharded=sharded, tagger=tagger, onnx=onnx, tf_only=tf_only)


@pytest.fixture
def hub(repos):
    """The stand-in Hub serving the repos; ``hub.commits`` maps ``repo@revision`` to commit ids."""
    with HubServer() as server:
        server.add("org/bert", repos.bert)
        server.add("org/bert", repos.sharded, revision="v1")
        server.add("org/tagger", repos.tagger)
        server.add("org/onnx-tagger", repos.onnx)
        server.add("org/tf-only", repos.tf_only)
        server.add("org/gated", repos.bert, gated=True)
        server.add("bert-tiny", repos.bert)
        yield server


def hub_env(hub: HubServer, home: Path, **extra) -> dict:
    """The environment of a user whose HF_HOME is ``home`` and whose Hub is ``hub``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGINGFACE_", "HUGGING_FACE_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(home), HF_ENDPOINT=hub.url, HF_HUB_DISABLE_PROGRESS_BARS="1",
               HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false", **extra)
    return env


def tagtune(hub, home, *args, stdin: str | None = None, **env) -> subprocess.CompletedProcess:
    """``python -m tagtune ARGS`` in ``home``, with :func:`hub_env`."""
    return subprocess.run([sys.executable, "-m", "tagtune", *args], env=hub_env(hub, home, **env), input=stdin,
                          cwd=home, capture_output=True, text=True, timeout=120)


def python(hub, home, code: str, *args, **env) -> subprocess.CompletedProcess:
    """``python -c CODE ARGS`` in ``home``, with :func:`hub_env`."""
    return subprocess.run([sys.executable, "-c", code, *args], env=hub_env(hub, home, **env), cwd=home,
                          capture_output=True, text=True, timeout=120)


def snapshot(home: Path, repo: str, commit: str) -> Path:
    return home / "hub" / ("models--" + repo.replace("/", "--")) / "snapshots" / commit


def token_ids(result: subprocess.CompletedProcess) -> list[int]:
    assert result.returncode == 0, result.stderr
    return [t["id"] for t in json.loads(result.stdout)["tokens"]]


def assert_one_error(result: subprocess.CompletedProcess, *words: str) -> str:
    """Exit status 1 and one line on stderr, ``tagtune: error: ...``, naming ``words``."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tagtune: error: "), result.stderr
    for word in words:
        assert word in lines[0]
    return lines[0]


TRANSFORMERS_LOAD = """
import json, sys, transformers
model = transformers.AutoModel.from_pretrained(sys.argv[1])
tokenizer = transformers.AutoTokenizer.from_pretrained(sys.argv[1])
ids = tokenizer("Hello Lisbon", add_special_tokens=False)["input_ids"]
print(json.dumps({"hidden": model.config.hidden_size, "ids": ids}))
"""


def test_a_hub_model_is_downloaded_once_then_used_offline_by_tagtune_and_transformers(hub, tmp_path):
    first = tagtune(hub, tmp_path, "info", "org/bert")
    assert first.returncode == 0, first.stderr
    folder = snapshot(tmp_path, "org/bert", hub.commits["org/bert@main"])
    assert json.loads(first.stdout)["directory"] == str(folder)
    fetched = hub.downloads("org/bert")
    assert sorted(fetched) == sorted(["config.json", "model.safetensors", *TOKENIZER])  # no README, onnx/, tf, ...
    assert fetched[-1] == "config.json"
    assert (folder.parent.parent / "refs" / "main").read_text() == hub.commits["org/bert@main"]

    hub.stop()
    offline = tagtune(hub, tmp_path, "info", "org/bert", HF_HUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout) == json.loads(first.stdout)
    ours = token_ids(tagtune(hub, tmp_path, "tokenize", "org/bert", "Hello Lisbon"))  # no network, no offline flag

    theirs = python(hub, tmp_path, TRANSFORMERS_LOAD, "org/bert", HF_HUB_OFFLINE="1")
    assert theirs.returncode == 0, theirs.stderr
    assert json.loads(theirs.stdout.strip().splitlines()[-1]) == {"hidden": 32, "ids": ours}


def test_what_transformers_downloaded_serves_tagtune_offline(hub, tmp_path):
    theirs = python(hub, tmp_path, TRANSFORMERS_LOAD, "org/bert")
    assert theirs.returncode == 0, theirs.stderr
    hub.stop()
    ids = json.loads(theirs.stdout.strip().splitlines()[-1])["ids"]
    assert token_ids(tagtune(hub, tmp_path, "tokenize", "org/bert", "Hello Lisbon", HF_HUB_OFFLINE="1")) == ids


def test_revisions_by_branch_and_by_commit(hub, tmp_path):
    main, v1 = hub.commits["org/bert@main"], hub.commits["org/bert@v1"]
    branch = tagtune(hub, tmp_path, "info", "org/bert@v1")
    assert branch.returncode == 0, branch.stderr
    assert json.loads(branch.stdout)["directory"] == str(snapshot(tmp_path, "org/bert", v1))
    fetched = hub.downloads("org/bert")
    assert "model.safetensors.index.json" in fetched and "model.safetensors" not in fetched
    assert len([name for name in fetched if name.startswith("model-0")]) >= 2  # every shard of the index
    assert (tmp_path / "hub" / "models--org--bert" / "refs" / "v1").read_text() == v1

    assert token_ids(tagtune(hub, tmp_path, "tokenize", f"org/bert@{main}", "Hello"))
    assert (snapshot(tmp_path, "org/bert", main) / "model.safetensors").is_file()
    assert not (tmp_path / "hub" / "models--org--bert" / "refs" / "main").exists()

    hub.stop()
    assert token_ids(tagtune(hub, tmp_path, "tokenize", "org/bert@v1", "Hello", HF_HUB_OFFLINE="1"))
    assert token_ids(tagtune(hub, tmp_path, "tokenize", f"org/bert@{main}", "Hello", HF_HUB_OFFLINE="1"))
    assert_one_error(tagtune(hub, tmp_path, "tokenize", "org/bert", "Hello", HF_HUB_OFFLINE="1"),
                     "not in the Hugging Face cache", "HF_HUB_OFFLINE")  # main was never resolved


def test_a_repo_id_without_a_namespace(hub, tmp_path):
    assert token_ids(tagtune(hub, tmp_path, "tokenize", "bert-tiny", "Hello"))
    assert (snapshot(tmp_path, "bert-tiny", hub.commits["bert-tiny@main"]) / "config.json").is_file()


def test_predict_with_a_tagger_from_the_hub(hub, tmp_path):
    result = tagtune(hub, tmp_path, "predict", "org/tagger", "--quiet", "--device", "cpu",
                     stdin="Angela Merkel visited Lisbon\n")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["text"] == "Angela Merkel visited Lisbon" and isinstance(record["spans"], list)
    assert sorted(hub.downloads("org/tagger")) == sorted(["config.json", "model.safetensors", "tagtune.json",
                                                           *TOKENIZER])


def test_an_onnx_tagger_resolves_without_torch(hub, tmp_path):
    code = "import sys; sys.modules['torch'] = None; from tagtune.store.hub import resolve; print(resolve(sys.argv[1]))"
    result = python(hub, tmp_path, code, "org/onnx-tagger")
    assert result.returncode == 0, result.stderr
    folder = Path(result.stdout.strip())
    assert folder == snapshot(tmp_path, "org/onnx-tagger", hub.commits["org/onnx-tagger@main"])
    expected = sorted(["config.json", "model.onnx", "tagtune.json", *TOKENIZER])
    assert sorted(p.name for p in folder.iterdir()) == expected == sorted(hub.downloads("org/onnx-tagger"))


def test_a_gated_repo_needs_a_token_with_access(hub, tmp_path):
    assert_one_error(tagtune(hub, tmp_path, "tokenize", "org/gated", "Hello"),
                     "gated", f"{hub.url}/org/gated", "hf auth login", "HF_TOKEN")
    assert_one_error(tagtune(hub, tmp_path, "tokenize", "org/gated", "Hello", HF_TOKEN="hf_other"),
                     "gated", "no access", f"{hub.url}/org/gated")
    assert token_ids(tagtune(hub, tmp_path, "tokenize", "org/gated", "Hello", HF_TOKEN=TOKEN))


@pytest.mark.parametrize("source, words", [
    ("org/missing", ["no model org/missing on the Hub", "private or gated", "hf auth login", "HF_TOKEN"]),
    ("org/bert@nope", ["org/bert has no revision 'nope'"]),
    ("org/tf-only", ["no weights tagtune can read", "tf_model.h5", "README.md"]),
])
def test_hub_errors_are_one_line(hub, tmp_path, source, words):
    assert_one_error(tagtune(hub, tmp_path, "tokenize", source, "Hello"), source, *words)


@pytest.mark.parametrize("source, words", [
    ("./nope", ["./nope: no such folder"]),
    ("org/bert@../../x", ["not a valid revision"]),
])
def test_paths_and_bad_revisions_never_reach_the_hub(hub, tmp_path, source, words):
    message = assert_one_error(tagtune(hub, tmp_path, "tokenize", source, "Hello"), *words)
    assert "download" not in message and "hf " not in message
    assert hub.log == [] and list(tmp_path.iterdir()) == []


def test_an_unreachable_hub_or_offline_mode_without_the_model_in_the_cache(hub, tmp_path):
    assert_one_error(tagtune(hub, tmp_path, "tokenize", "org/bert", "Hello", HF_HUB_OFFLINE="1"),
                     "not in the Hugging Face cache", str(tmp_path / "hub"), "HF_HUB_OFFLINE")
    assert hub.log == []
    hub.stop()
    assert_one_error(tagtune(hub, tmp_path, "tokenize", "org/bert", "Hello"),
                     "the Hub at", hub.url, "cannot be reached", str(tmp_path / "hub"), "HF_HUB_OFFLINE=1",
                     f"nor is it a folder in {tmp_path}")


def test_an_interrupted_download_is_not_taken_for_a_model(hub, tmp_path):
    hub.failing.add("model.safetensors")
    assert_one_error(tagtune(hub, tmp_path, "tokenize", "org/bert", "Hello"), "HTTP 500", "model.safetensors")
    assert sorted(hub.downloads("org/bert")) == TOKENIZER
    assert_one_error(tagtune(hub, tmp_path, "tokenize", "org/bert", "Hello", HF_HUB_OFFLINE="1"),
                     "not in the Hugging Face cache")

    hub.failing.clear()
    hub.log.clear()
    assert token_ids(tagtune(hub, tmp_path, "tokenize", "org/bert", "Hello"))
    assert hub.downloads("org/bert") == ["model.safetensors", "config.json"]  # the rest was kept
