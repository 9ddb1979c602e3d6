"""``tagtune push``: a tagger folder uploaded to the stand-in Hub (tests/hub_server.py) through
huggingface_hub, then downloaded back by ``tagtune predict REPO_ID`` from an empty HF cache.

The CLI runs in this process (``cli``) with the environment a user would have: HF_ENDPOINT at
the stand-in, HF_HOME an empty folder, HF_TOKEN set or not. huggingface_hub reads
HF_HUB_DISABLE_XET and the saved token's path when imported, so those are set on its constants.
"""

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from hub_server import READ_TOKEN, TOKEN, HubServer

TEXTS = "@paulwalk It's the view from where I'm living for two weeks. Empire State Building = ESB. Pretty bad storm " \
        "here last evening.\nGoing to see Harry Potter in London with Justin Bieber tomorrow\n"
TAGGER_FILES = ["README.md", "config.json", "model.safetensors", "special_tokens_map.json", "tagtune.json",
                "tokenizer.json", "tokenizer_config.json", "vocab.txt"]


@pytest.fixture
def hub():
    with HubServer() as server:
        yield server


@pytest.fixture
def user(hub, tmp_path, monkeypatch):
    """A user of ``hub``, logged in with TOKEN, whose HF cache is empty."""
    import huggingface_hub.constants as constants

    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the stand-in serves git-lfs, not Xet
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    return monkeypatch


def with_clutter(tagger: Path, out: Path) -> Path:
    """A copy of ``tagger`` in ``out`` with what a training run and editors leave beside it."""
    shutil.copytree(tagger, out)
    (out / "checkpoint").mkdir(exist_ok=True)
    (out / "checkpoint" / "state.pt").write_bytes(b"optimizer state")
    for name in ("model.safetensors.tmp", ".tmp-config.json", ".DS_Store", "notes.txt"):
        (out / name).write_text("not part of the tagger")
    return out


@pytest.fixture
def folder(tiny_tagger, tmp_path):
    return with_clutter(tiny_tagger, tmp_path / "tagger")


def contents(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def spans(result) -> list:
    assert result.returncode == 0, result.stderr
    return [json.loads(line)["spans"] for line in result.stdout.splitlines()]


def assert_one_error(result, *words: str) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tagtune: error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_a_pushed_tagger_predicts_from_the_hub_as_the_folder_does(cli, hub, user, trained_tagger, tmp_path,
                                                                  monkeypatch):
    folder = with_clutter(trained_tagger, tmp_path / "tagger")
    before = contents(folder)
    pushed = cli("push", folder, "me/wnut-tiny")
    assert pushed.returncode == 0, pushed.stderr
    commit = hub.commits["me/wnut-tiny@main"]
    assert pushed.stdout.strip() == f"{hub.url}/me/wnut-tiny/commit/{commit}"
    assert "uploading 8 files" in pushed.stderr and "me/wnut-tiny" in pushed.stderr
    assert hub.files("me/wnut-tiny") == sorted([".gitattributes", *TAGGER_FILES])  # no checkpoint/, no temp files
    assert contents(folder) == before
    for name in TAGGER_FILES:
        assert (folder / name).read_bytes() == (hub.repos["me/wnut-tiny"].commits[commit] / name).read_bytes()
    assert [path for method, path in hub.log if method.startswith("PUT")] == [
        f"/lfs/{hashlib.sha256((folder / 'model.safetensors').read_bytes()).hexdigest()}"]  # through LFS

    texts = tmp_path / "texts.txt"
    texts.write_text(TEXTS)
    local = spans(cli("predict", folder, texts, "--quiet", "--device", "cpu"))
    monkeypatch.chdir(tmp_path)
    remote = spans(cli("predict", "me/wnut-tiny", texts, "--quiet", "--device", "cpu"))
    assert remote == local and any(local)
    assert sorted(hub.downloads("me/wnut-tiny")) == sorted(set(TAGGER_FILES) - {"README.md"})
    assert (tmp_path / "hf-home" / "hub" / "models--me--wnut-tiny" / "refs" / "main").read_text() == commit


def test_a_new_branch_of_a_private_repo(cli, hub, user, folder):
    pushed = cli("push", folder, "me/private-tagger", "--private", "--revision", "v2", "--quiet",
                 "--commit-message", "second try")
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stderr == ""
    repo = hub.repos["me/private-tagger"]
    assert repo.private and set(repo.refs) == {"main", "v2"}
    assert hub.files("me/private-tagger", "v2") == sorted([".gitattributes", *TAGGER_FILES])
    assert hub.files("me/private-tagger") == [".gitattributes"]
    user.delenv("HF_TOKEN")
    assert_one_error(cli("info", "me/private-tagger@v2"), "no model me/private-tagger")  # private: hidden


def test_files_of_another_form_are_removed_from_the_branch(cli, hub, user, folder, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(folder, old, ignore=shutil.ignore_patterns("model.safetensors", "checkpoint"))
    (old / "model.onnx").write_bytes(b"an earlier export")
    (old / "crf.json").write_text("{}")
    hub.add("me/tagger", old)
    assert cli("push", folder, "me/tagger").returncode == 0
    files = hub.files("me/tagger")
    assert "model.onnx" not in files and "crf.json" not in files and "model.safetensors" in files
    assert "notes.txt" in files  # a file of the repo's own is left


def test_a_dry_run_lists_the_files_and_sends_nothing(cli, hub, user, folder):
    result = cli("push", folder, "me/wnut-tiny", "--dry-run")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert sorted(line.split()[0] for line in lines[:-1]) == TAGGER_FILES
    size = (folder / "config.json").stat().st_size
    assert any(line.split() == ["config.json", f"{size / 1e3:.1f}", "kB"] for line in lines)
    assert lines[-1].startswith("8 files, ") and "nothing sent" in lines[-1]
    assert hub.log == [] and "me/wnut-tiny" not in hub.repos


def test_upload_errors_are_one_line(cli, hub, user, folder):
    user.delenv("HF_TOKEN")
    assert_one_error(cli("push", folder, "me/x"), "not logged in", hub.url, "hf auth login", "HF_TOKEN")
    user.setenv("HF_TOKEN", "hf_revoked")
    assert_one_error(cli("push", folder, "me/x"), "refused the token", "HTTP 401")
    user.setenv("HF_TOKEN", READ_TOKEN)
    assert_one_error(cli("push", folder, "me/x"), "no write access", "me/x", "HTTP 403")
    assert "me/x" not in hub.repos
    user.setenv("HF_TOKEN", TOKEN)
    assert_one_error(cli("push", folder, "datasets/me/x"), "a dataset repo", "model repo")
    assert_one_error(cli("push", folder, "spaces/me/x"), "a space repo")
    hub.stop()
    assert_one_error(cli("push", folder, "me/x"), "cannot be reached", hub.url, "Errno")


def test_what_is_not_a_finished_tagger_is_refused(cli, hub, user, folder, tiny_bert, tmp_path):
    (folder / "tagtune-run.json").write_text(json.dumps({"format": 1, "finished": False}))
    assert_one_error(cli("push", folder, "me/x"), "unfinished training run", "resume")
    assert_one_error(cli("push", tiny_bert, "me/x"), "without tagtune.json", "not a tagger")
    (tmp_path / "empty").mkdir()
    assert_one_error(cli("push", tmp_path / "empty", "me/x"), "an empty folder")
    assert_one_error(cli("push", tmp_path / "nope", "me/x"), "no such folder")
    assert_one_error(cli("push", folder / "notes.txt", "me/x"), "is a file")
    assert hub.log == []
