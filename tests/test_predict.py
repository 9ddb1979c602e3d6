"""`tagtune predict` as a user runs it: typed lines answered one by one on a terminal, a reader
that stops early (`| head`), CoNLL and JSONL files recognised, and misuse answered in one line."""

import json
import os
import pty
import select
import subprocess
import sys
import termios
import time

import pytest

from tagtune.data.formats import read_examples
from tagtune.apps.examples import wnut_sentences, write_conll

LABELS = ["O", "B-X", "I-X", "B-Y", "I-Y"]


@pytest.fixture(scope="module", autouse=True)
def _fp32():
    """fp32 whatever the CPU: --bf16 auto in this process and in every `tagtune predict` started
    here. The random head's near-equal logits would otherwise tip apart where one side runs in
    bf16 and the other in fp32."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TAGTUNE_CPU_BF16", "off")
        yield


@pytest.fixture(scope="module")
def tagger_dir(tiny_bert, tmp_path_factory):
    """A tagger folder in seconds: the tiny BERT with a random 2-type head (spans at random places,
    which is all that reading and writing need)."""
    import torch

    from tagtune.models.checkpoint import load_model, save_model
    from tagtune.text.tokenizer import load_tokenizer

    torch.manual_seed(3)
    model, _ = load_model(tiny_bert, labels=LABELS)
    return save_model(model, load_tokenizer(tiny_bert), tmp_path_factory.mktemp("predict") / "tagger")


@pytest.fixture(scope="module")
def tagger(tagger_dir):
    from tagtune import Tagger

    tagger = Tagger.load(tagger_dir, device="cpu")
    assert tagger.precision == "fp32"
    return tagger


def command(*args):
    return [sys.executable, "-m", "tagtune", *map(str, args)]


def run(*args, stdin=None):
    return subprocess.run(command(*args), capture_output=True, text=True, input=stdin, timeout=300)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tagtune: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def spans_of(tagger, texts):
    return [[s.to_dict(t) for s in spans] for t, spans in zip(texts, tagger.predict(texts))]


def records(stdout):
    return [json.loads(line) for line in stdout.splitlines()]


# --------------------------------------------------------------------------- a terminal


class Terminal:
    """A child process whose stdin and stdout are a pseudo-terminal, as in an interactive shell
    (line editing on, echo off so that only the program's output comes back)."""

    def __init__(self, args):
        self.master, slave = pty.openpty()
        attributes = termios.tcgetattr(slave)
        attributes[3] &= ~termios.ECHO
        termios.tcsetattr(slave, termios.TCSANOW, attributes)
        self.process = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=subprocess.PIPE, close_fds=True)
        os.close(slave)
        self.seen = b""

    def type(self, text: str) -> None:
        os.write(self.master, text.encode("utf-8"))

    def read_record(self, deadline_s: float = 120) -> dict:
        """The next JSON line the program writes."""
        deadline = time.monotonic() + deadline_s
        while True:
            lines = self.seen.split(b"\n")
            for i, line in enumerate(lines[:-1]):
                if line.startswith(b"{"):
                    self.seen = b"\n".join(lines[i + 1:])
                    return json.loads(line.decode("utf-8"))
            left = deadline - time.monotonic()
            ready = select.select([self.master], [], [], max(0.0, left))[0] if left > 0 else []
            if not ready:
                raise AssertionError(f"no answer before the end of input; the terminal shows {self.seen!r}")
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # the child closed the terminal
                chunk = b""
            if not chunk:
                raise AssertionError(f"the program ended without answering: {self.process.stderr.read()!r}")
            self.seen += chunk.replace(b"\r\n", b"\n")

    def close(self) -> tuple[int, str]:
        self.type("\x04")  # Ctrl-D at the start of a line: end of input
        code = self.process.wait(timeout=120)
        err = self.process.stderr.read().decode("utf-8")
        os.close(self.master)
        return code, err


def test_terminal_lines_are_answered_as_they_are_typed(tagger_dir, tagger):
    """Each typed line gets its JSON line while the input is still open (before Ctrl-D)."""
    terminal = Terminal(command("predict", tagger_dir))
    try:
        for text in ("Angela Merkel visited Lisbon", "東京タワーは港区にあります。"):
            terminal.type(text + "\n")
            record = terminal.read_record()
            assert terminal.process.poll() is None  # still reading: the answer did not wait for the end
            assert record == {"text": text, "spans": spans_of(tagger, [text])[0]}
        code, err = terminal.close()
    finally:
        if terminal.process.poll() is None:
            terminal.process.kill()
    assert code == 0
    assert err.splitlines() == ["tagtune: type a text per line, Ctrl-D to end"]  # the hint, no progress bar


def test_terminal_jsonl_and_quiet(tagger_dir, tagger):
    terminal = Terminal(command("predict", tagger_dir, "--quiet"))
    try:
        terminal.type('{"id": 7, "text": "Barack Obama in Paris"}\n')
        assert terminal.read_record() == {"id": 7, "text": "Barack Obama in Paris",
                                          "spans": spans_of(tagger, ["Barack Obama in Paris"])[0]}
        assert terminal.process.poll() is None
        code, err = terminal.close()
    finally:
        if terminal.process.poll() is None:
            terminal.process.kill()
    assert code == 0 and err == ""


# --------------------------------------------------------------------------- a reader that stops early


@pytest.fixture(scope="module")
def many_lines(tmp_path_factory):
    path = tmp_path_factory.mktemp("many") / "texts.txt"
    path.write_text("".join(f"text number {i} about Lisbon and Paris\n" for i in range(3000)), encoding="utf-8")
    return path


def test_head_closing_the_pipe_is_quiet(tagger_dir, many_lines):
    """`tagtune predict TAGGER FILE | head -1`: one line out, exit 0, nothing on stderr but progress."""
    producer = subprocess.Popen(command("predict", tagger_dir, many_lines), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    head = subprocess.Popen(["head", "-1"], stdin=producer.stdout, stdout=subprocess.PIPE)
    producer.stdout.close()  # only head holds the read end now
    out, _ = head.communicate(timeout=300)
    err = producer.stderr.read().decode()
    code = producer.wait(timeout=300)
    assert json.loads(out)["text"] == "text number 0 about Lisbon and Paris"
    assert "Traceback" not in err and "Exception" not in err and "Error" not in err, err
    assert code == 0, err


@pytest.mark.parametrize("args", [
    ["predict", "TAGGER", "TEXTS", "--quiet"],
    ["tokenize", "MODEL", "one short text"],
    ["--help"],
    ["--version"],
])
def test_output_to_a_closed_pipe(args, tagger_dir, many_lines, tiny_bert):
    """stdout is a pipe whose reader is already gone: even a short output that would only be
    written by the flush at exit ends quietly with status 0."""
    args = [{"TAGGER": tagger_dir, "TEXTS": many_lines, "MODEL": tiny_bert}.get(a, a) for a in args]
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(command(*args), stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == 0


# --------------------------------------------------------------------------- CoNLL and JSONL files


def test_conll_file_is_read_as_sentences(tagger_dir, tagger, tmp_path):
    sentences = wnut_sentences()[:23]
    path = tmp_path / "dev.txt"  # no CoNLL suffix: recognised by its content
    write_conll(path, sentences)
    with open(path, "r+", encoding="utf-8") as f:  # a -DOCSTART- line, as CoNLL-2003 files have
        body = f.read()
        f.seek(0)
        f.write("-DOCSTART- -X- O\n\n" + body)
    texts = [example.text for example in read_examples(path)]
    assert texts == [" ".join(tokens) for tokens, _ in sentences]
    result = run("predict", tagger_dir, path, "--batch-texts", "5")
    assert result.returncode == 0, result.stderr
    assert f"tagtune: reading {path} as CoNLL: 23 sentences" in result.stderr.splitlines()
    assert records(result.stdout) == [{"text": t, "spans": s} for t, s in zip(texts, spans_of(tagger, texts))]
    # the same from stdin
    piped = run("predict", tagger_dir, "--quiet", stdin=path.read_text(encoding="utf-8"))
    assert piped.returncode == 0 and piped.stderr == ""
    assert piped.stdout == result.stdout


def test_conll_suffix_and_format_option(tagger_dir, tagger, tmp_path):
    """A .conll file with one column (tokens, no tags) is CoNLL by its name; --format overrides."""
    path = tmp_path / "tokens.conll"
    path.write_text("Angela\nMerkel\r\nvisited\nLisbon\n\n\n大阪\nに\n", encoding="utf-8")
    texts = ["Angela Merkel visited Lisbon", "大阪 に"]
    result = run("predict", tagger_dir, path, "--quiet")
    assert result.returncode == 0, result.stderr
    assert records(result.stdout) == [{"text": t, "spans": s} for t, s in zip(texts, spans_of(tagger, texts))]
    as_text = run("predict", tagger_dir, path, "--quiet", "--format", "text")
    assert [r["text"] for r in records(as_text.stdout)] == path.read_text().replace("\r", "").splitlines()


def test_plain_text_is_not_taken_for_conll(tagger_dir, tmp_path):
    """Texts that happen to end in a word like a tag stay texts: one such line has no tab."""
    path = tmp_path / "plans.txt"
    path.write_text("We went with plan B-2\n", encoding="utf-8")
    result = run("predict", tagger_dir, path)
    assert result.returncode == 0, result.stderr
    assert [r["text"] for r in records(result.stdout)] == ["We went with plan B-2"]
    assert "CoNLL" not in result.stderr


def test_jsonl_fields_are_copied(tagger_dir, tagger, tmp_path):
    path = tmp_path / "in.jsonl"
    rows = [{"id": 1, "text": "Barack Obama", "lang": "en"}, {"id": 2, "text": "京都タワー"}]
    path.write_text("\n" + "\n\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    result = run("predict", tagger_dir, path, "-o", tmp_path / "out.jsonl")
    assert result.returncode == 0, result.stderr
    assert f"tagtune: reading {path} as JSONL: 2 records" in result.stderr
    got = records((tmp_path / "out.jsonl").read_text(encoding="utf-8"))
    assert got == [dict(r, spans=s) for r, s in zip(rows, spans_of(tagger, [r["text"] for r in rows]))]


def test_options_before_the_input_file(tagger_dir, tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("one\ntwo\n")
    result = run("predict", tagger_dir, "--quiet", path)
    assert result.returncode == 0, result.stderr
    assert [r["text"] for r in records(result.stdout)] == ["one", "two"]
    assert run("predict", tagger_dir, path, "extra").returncode == 2


# --------------------------------------------------------------------------- misuse


def test_invalid_utf8_on_stdin(tagger_dir):
    result = subprocess.run(command("predict", tagger_dir), input=b"fine\nbad \xff\xfe bytes\n",
                            capture_output=True, timeout=300)
    result.stderr = result.stderr.decode()
    assert_one_line_error(result, "stdin:2: not UTF-8")


def test_invalid_utf8_in_a_file(tagger_dir, tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"caf\xe9\n")
    assert_one_line_error(run("predict", tagger_dir, tmp_path / "bad.txt"), "bad.txt:1: not UTF-8", "0xe9")


def test_output_naming_a_folder(tagger_dir, tmp_path):
    (tmp_path / "in.txt").write_text("hello\n")
    for extra in ([], ["--overwrite"]):
        assert_one_line_error(run("predict", tagger_dir, tmp_path / "in.txt", "-o", tmp_path, *extra),
                              str(tmp_path), "is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt"]


def test_input_naming_a_folder(tagger_dir, tmp_path):
    assert_one_line_error(run("predict", tagger_dir, tmp_path), "is a directory")


def test_closed_stdin(tagger_dir):
    result = subprocess.run(command("predict", tagger_dir), capture_output=True, text=True, timeout=300,
                            preexec_fn=lambda: os.close(0))
    assert_one_line_error(result, "stdin is closed")


def test_unknown_format(tagger_dir, tmp_path):
    from tagtune import TagtuneError
    from tagtune.apps.predict import predict_file

    with pytest.raises(TagtuneError, match="unknown input format 'csv'"):
        predict_file(str(tagger_dir), "-", format="csv")


# --------------------------------------------------------------------------- span scores and min_score


@pytest.fixture(scope="module")
def tweet_texts():
    return [" ".join(tokens) for tokens, _ in wnut_sentences()[:40]]


def median_score(tagger, texts):
    scores = sorted(s.score for spans in tagger.predict(texts) for s in spans)
    assert len(scores) > 10 and all(0 < s <= 1 for s in scores)
    return scores[len(scores) // 2]


def dicts(texts, predicted):
    return [[s.to_dict(t) for s in spans] for t, spans in zip(texts, predicted)]


def test_min_score_drops_the_spans_below_it(tagger_dir, tagger, tweet_texts):
    from tagtune import Tagger

    full = tagger.predict(tweet_texts)
    floor = median_score(tagger, tweet_texts)
    kept = [[s for s in spans if s.score >= floor] for spans in full]
    assert 0 < sum(map(len, kept)) < sum(map(len, full))
    assert dicts(tweet_texts, tagger.predict(tweet_texts, min_score=floor)) == dicts(tweet_texts, kept)
    assert dicts(tweet_texts[:1], [tagger(tweet_texts[0], min_score=floor)]) == dicts(tweet_texts[:1], kept[:1])
    # as the tagger's own setting, which a call may lower again
    strict = Tagger.load(tagger_dir, device="cpu", min_score=floor)
    assert strict.min_score == floor
    assert dicts(tweet_texts, strict(tweet_texts)) == dicts(tweet_texts, kept)
    assert dicts(tweet_texts, strict.predict(tweet_texts, min_score=0)) == dicts(tweet_texts, full)


@pytest.mark.parametrize("value", [1.5, -0.1, float("nan"), float("inf"), "0.5", True, None])
def test_min_score_outside_0_to_1_is_refused(tagger_dir, tagger, value):
    from tagtune import TagtuneError
    from tagtune import Tagger

    if value is not None:  # None means "the tagger's own" in a call, but is no setting of its own
        with pytest.raises(TagtuneError, match="min_score must be a number from 0 to 1"):
            tagger.predict(["Barack Obama"], min_score=value)
    with pytest.raises(TagtuneError, match="min_score must be a number from 0 to 1"):
        Tagger.load(tagger_dir, device="cpu", min_score=value)


def test_min_score_option(tagger_dir, tagger, tweet_texts, tmp_path):
    path = tmp_path / "tweets.txt"
    path.write_text("\n".join(tweet_texts) + "\n", encoding="utf-8")
    floor = median_score(tagger, tweet_texts)
    result = run("predict", tagger_dir, path, "--quiet", "--min-score", floor)
    assert result.returncode == 0, result.stderr
    want = dicts(tweet_texts, [[s for s in spans if s.score >= floor] for spans in tagger.predict(tweet_texts)])
    got = [r["spans"] for r in records(result.stdout)]
    assert got == want and sum(map(len, got)) > 0
    # --argmax too: its spans' scores are their probabilities with each unit on its own
    argmax = run("predict", tagger_dir, path, "--quiet", "--argmax")
    assert argmax.returncode == 0, argmax.stderr
    every = [r["spans"] for r in records(argmax.stdout)]
    scores = sorted(s["score"] for spans in every for s in spans)
    upper = scores[len(scores) // 2]
    floor = (upper + max(x for x in scores if x < upper)) / 2  # between two of the printed (rounded) scores
    argmax = run("predict", tagger_dir, path, "--quiet", "--argmax", "--min-score", floor)
    assert argmax.returncode == 0, argmax.stderr
    kept = [r["spans"] for r in records(argmax.stdout)]
    assert kept == [[s for s in spans if s["score"] >= floor] for spans in every]
    assert 0 < sum(map(len, kept)) < len(scores)


@pytest.mark.parametrize("value", ["1.5", "-0.25", "nan", "inf"])
def test_min_score_option_outside_0_to_1(tagger_dir, tmp_path, value):
    (tmp_path / "in.txt").write_text("Barack Obama\n")
    result = run("predict", tagger_dir, tmp_path / "in.txt", "-o", tmp_path / "out.jsonl", "--min-score", value)
    assert_one_line_error(result, "min-score must be a number from 0 to 1")
    assert not (tmp_path / "out.jsonl").exists()
    assert result.stdout == ""


def test_prediction_gives_freed_memory_back(tagger, monkeypatch):
    """After each batch of texts on the CPU, the C heap's free pages go back to the system, so a
    long prediction's resident memory stays flat (bench/scale_bench.py measures it)."""
    import platform

    from tagtune.inference import runtime as module

    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert module.release_freed_memory() is True
    calls = []
    monkeypatch.setattr(module, "release_freed_memory", lambda: calls.append(1) or True)
    tagger.predict(["Barack Obama visited Lisbon", "lol"])
    tagger.predict(["Tokyo"])
    assert len(calls) == 2
