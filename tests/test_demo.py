"""The demo: the tweets split 80/10/10 the same way every run into CoNLL files that every command
reads, a folder of the user's never written into, and one quick end-to-end run (a tiny model, a
few tweets, one epoch) that prints dev and test F1, test tweets and the commands to go on with."""

import json
import re
import shlex
import subprocess
import sys

import pytest

from tagtune.apps.demo import DEMO_TIMING, SPLIT, main, split_tweets, write_data
from tagtune.data.formats import read_examples
from tagtune.errors import TagtuneError

NAMES = [name for name, _ in SPLIT]


def entities(sentences):
    return sum(tag.startswith("B-") for _, tags in sentences for tag in tags)


def test_the_split_is_80_10_10_seeded_and_in_file_order(tweets):
    parts = split_tweets(tweets)
    assert list(parts) == ["train.conll", "dev.conll", "test.conll"]
    assert [len(part) for part in parts.values()] == [1916, 239, 239]  # 2,394 tweets; a tenth is 239.4
    place = {id(sentence): i for i, sentence in enumerate(tweets)}
    where = [[place[id(sentence)] for sentence in part] for part in parts.values()]
    assert all(numbers == sorted(numbers) for numbers in where)  # each part keeps the file's order
    assert sorted(sum(where, [])) == list(range(len(tweets)))  # every tweet in exactly one part
    assert split_tweets(tweets) == parts  # the same every run
    assert split_tweets(tweets, seed=1)["test.conll"] != parts["test.conll"]
    small = split_tweets([([str(i)], ["O"]) for i in range(10)])
    assert [len(part) for part in small.values()] == [8, 1, 1]
    with pytest.raises(TagtuneError, match="at least 10 tweets"):
        split_tweets(tweets[:9])


def test_the_files_read_back_and_a_users_folder_is_never_written(tmp_path, tweets):
    parts = split_tweets(tweets[:50])
    folder = tmp_path / "runs" / "wnut"
    paths = write_data(folder, parts)
    assert [p.name for p in paths] == NAMES and sorted(p.name for p in folder.iterdir()) == sorted(NAMES)
    for path, part in zip(paths, parts.values()):
        examples = read_examples(path)
        assert [e.text for e in examples] == [" ".join(tokens) for tokens, _ in part]
        assert sum(len(e.spans) for e in examples) == entities(part)
    assert [len(read_examples(p)) for p in paths] == [40, 5, 5]
    # an earlier demo run's files: the same content, left as they are
    stamps = [p.stat().st_mtime_ns for p in paths]
    assert write_data(folder, parts) == paths and [p.stat().st_mtime_ns for p in paths] == stamps
    # one missing (an interrupted run): written; an empty folder is fine too
    paths[2].unlink()
    write_data(folder, parts)
    assert len(read_examples(paths[2])) == 5
    (tmp_path / "empty").mkdir()
    write_data(tmp_path / "empty", parts)
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == sorted(NAMES)

    # a file of the user's beside them, a file edited, other tweets: an error, and nothing written
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me\n")
    with pytest.raises(TagtuneError, match="notes.txt: not a file the demo writes"):
        write_data(user, parts)
    assert [p.name for p in user.iterdir()] == ["notes.txt"]
    edited = paths[0].read_text(encoding="utf-8").replace("\tO\n", "\tB-person\n", 1)
    paths[0].write_text(edited, encoding="utf-8")
    with pytest.raises(TagtuneError, match="train.conll: not the tweets the demo writes there"):
        write_data(folder, parts)
    assert paths[0].read_text(encoding="utf-8") == edited
    with pytest.raises(TagtuneError, match="another --limit"):
        write_data(tmp_path / "empty", split_tweets(tweets[:60]))
    (tmp_path / "afile").write_text("x")
    with pytest.raises(TagtuneError, match="afile: not a folder"):
        write_data(tmp_path / "afile", parts)


def test_bad_data_folder_and_limit_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "wnut").mkdir()
    (tmp_path / "wnut" / "train.conll").write_text("my own\tO\n\n")
    assert main(["--out", str(tmp_path / "tagger"), "--limit", "50"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"tagtune: error: {tmp_path / 'wnut' / 'train.conll'}: not the tweets the demo writes")
    assert (tmp_path / "wnut" / "train.conll").read_text() == "my own\tO\n\n" and not (tmp_path / "tagger").exists()
    assert main(["--out", str(tmp_path / "tagger"), "--data", str(tmp_path / "other"), "--limit", "9"]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "tagtune: error: --limit 9: need at least 10 tweets to split 80/10/10"
    assert not (tmp_path / "other").exists()


def test_the_demo_end_to_end_on_a_tiny_model(tmp_path, tiny_bert):
    out = tmp_path / "runs" / "tagger"
    result = subprocess.run([sys.executable, "-m", "tagtune.apps.demo", "--epochs", "1", "--model", str(tiny_bert),
                             "--limit", "60", "--out", str(out), "--bf16", "off"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    first = result.stderr.splitlines()[0]
    assert re.fullmatch(rf"tagtune demo: on .+, \d+ cores?; it took {re.escape(DEMO_TIMING)}; in fp32 .+ takes longer",
                        first), first
    data = tmp_path / "runs" / "wnut"  # beside --out
    assert sorted(p.name for p in data.iterdir()) == sorted(NAMES)
    assert [len(read_examples(data / name)) for name in NAMES] == [48, 6, 6]
    assert (out / "config.json").is_file()
    config = json.loads((out / "train_config.json").read_text())
    assert (config["train"], config["dev"]) == (str(data / "train.conll"), str(data / "dev.conll"))

    lines = result.stdout.splitlines()
    assert re.fullmatch(r"dev entity F1 \d\.\d{4} \(precision \d\.\d{4}, recall \d\.\d{4}\), epoch 1",
                        next(line for line in lines if line.startswith("dev entity F1")))
    test_line = next(line for line in lines if line.startswith("test entity F1"))
    assert test_line.endswith(f", 6 tweets of {data / 'test.conll'}")
    shown = lines.index("entities in test tweets (predicted | annotated):")
    test_texts = [e.text for e in read_examples(data / "test.conll") if e.spans]
    assert lines[shown + 1].strip() in {text[:110] for text in test_texts}
    assert lines[shown + 2].startswith("    predicted: ") and lines[shown + 3].startswith("    annotated: ")
    evaluate, predict = lines[-3].strip(), lines[-2].strip()
    assert evaluate.endswith(f"evaluate {shlex.quote(str(out))} {shlex.quote(str(data / 'test.conll'))}")
    assert predict.endswith(f"predict {shlex.quote(str(out))} -")
    assert lines[-1] == "then type a sentence and press Enter (Ctrl-D ends)"

    # the evaluate command it prints works, and scores the test file as the demo did
    scored = subprocess.run(shlex.split(evaluate) + ["--bf16", "off", "--quiet"], capture_output=True, text=True,
                            timeout=300)
    assert scored.returncode == 0, scored.stderr
    f1 = json.loads(scored.stdout)["f1"]
    assert test_line.startswith(f"test entity F1 {f1:.4f} ")
