"""Running the code blocks of README.md and the documentation pages as a reader would.

A page's ```sh blocks run in bash (``-euo pipefail``) and its ```python blocks in this Python,
one after the other in one empty folder, with ``tagtune`` on PATH as ``source
.venv/bin/activate`` puts it there, so a block may use what an earlier block of the page made.
Other fences (text, json, console, xml, yaml) are output or file contents and are not run.
Comments in the page, invisible on the site, tell the runner what a reader would have:

* ``<!-- test-setup: wnut tagger -->``: what ``make demo`` leaves, ``runs/wnut/{train,dev,test}.conll``
  (real WNUT-2016 tweets, fewer of them) and the tagger ``runs/wnut-minilm`` (a MiniLM tagger
  trained on real tweets);
* ``<!-- test-setup: llm -->``: a teacher model at ``http://localhost:11434/v1`` serving
  ``qwen2.5:7b``: the stand-in chat-completions server of tests/llm_server.py, answering each text
  of ``runs/wnut/*.conll`` with its gold entities, one in five of them wrong (left out or given
  another label; seeded by the text), and nothing for other texts. The page's address is
  replaced by the stand-in's;
* ``<!-- not run: REASON -->`` on the line before a block: the block is shown, not run (two
  machines, a GPU, a package index);
* ``<!-- background: URL -->`` before a block: the block is a server; it is started in the
  background, the next block runs once URL answers, and it is stopped at the end of the page.

The Hub ids the pages name are served by the stand-in Hub (tests/hub_server.py, HF_ENDPOINT),
which a page's ``tagtune push`` uploads to as a logged-in reader would (HF_TOKEN):
sentence-transformers/all-MiniLM-L6-v2 is the packaged all-MiniLM-L6-v2, cl-tohoku/bert-base-
japanese-v3 a tiny random BERT with that model's tokenizer settings (MeCab + WordPiece) and a
vocabulary learnt from the Japanese texts of the pages, sbintuitions/modernbert-ja-70m a tiny
random ModernBERT with a SentencePiece-style tokenizer.json. Port 8080 in a page is replaced by
a free port.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import unicodedata
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hub_server import TOKEN

from tagtune.apps.examples import write_conll

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RUN = ("sh", "python")
FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
SETUP = re.compile(r"<!--\s*test-setup:([^>]*)-->")
ACTIVATE = re.compile(r"^source \.venv/bin/activate[^\n]*\n", re.M)  # tagtune is on PATH already
MARK = re.compile(r"<!--\s*(not run|background):\s*(.*?)\s*-->\s*$")
LLM_URL = "http://localhost:11434/v1"  # Ollama's address, which the pages name
LLM_MODEL = "qwen2.5:7b"
LLM_ERROR_RATE = 0.2


@dataclass
class Block:
    language: str
    code: str
    line: int
    skip: str | None = None  # why it is not run
    background: str | None = None  # the URL that answers once the server is up


@dataclass
class Page:
    path: Path
    setup: set[str] = field(default_factory=set)
    blocks: list[Block] = field(default_factory=list)

    @property
    def runnable(self) -> list[Block]:
        return [b for b in self.blocks if b.language in RUN and not b.skip]


def read_page(path: Path) -> Page:
    text = path.read_text(encoding="utf-8")
    page = Page(path, {word for m in SETUP.finditer(text) for word in m.group(1).split()})
    for match in FENCE.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        block = Block(match.group(1), match.group(2), text.count("\n", 0, match.start()) + 1)
        mark = MARK.search(before)
        if mark and mark.group(1) == "not run":
            block.skip = mark.group(2)
        elif mark:
            block.background = mark.group(2)
        page.blocks.append(block)
    return page


def doc_pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reader_env(cwd: Path, hub_url: str) -> dict:
    """The reader's environment: the stand-in Hub at HF_ENDPOINT, logged in with a token that may
    write (HF_TOKEN, as a CI job sets it), large files sent over git-lfs (it serves no Xet)."""
    env = dict(os.environ, HF_ENDPOINT=hub_url, HF_HOME=str(cwd.parent / "hf-home"), HF_TOKEN=TOKEN,
               HF_HUB_DISABLE_XET="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_HUB_CACHE", None)
    return env


def run_page(page: Page, cwd: Path, hub_url: str, timeout: float = 900) -> list[subprocess.CompletedProcess]:
    """Runs the page's blocks in order in ``cwd``; each must exit 0 without a traceback."""
    env = reader_env(cwd, hub_url)
    port = str(free_port())
    results, servers = [], []
    teacher = teacher_stand_in(cwd) if "llm" in page.setup else None
    try:
        for number, block in enumerate(page.runnable):
            code = ACTIVATE.sub("", block.code).replace("8080", port)
            if teacher is not None:
                code = code.replace(LLM_URL, teacher.url)
            where = f"{page.path.relative_to(ROOT)}:{block.line}"
            if block.language == "python":
                script = cwd / f".block-{number}.py"
                script.write_text(code, encoding="utf-8")
                command = [sys.executable, script.name]
            else:
                command = ["bash", "-euo", "pipefail", "-c", code]
            if block.background:
                servers.append((where, subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                                        stderr=subprocess.PIPE, text=True,
                                                        start_new_session=True)))
                wait_for(block.background.replace("8080", port), servers[-1][1], where)
                continue
            result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
            assert result.returncode == 0, \
                f"{where}: block failed ({result.returncode}):\n{code}\n--- stderr:\n{result.stderr[-3000:]}"
            assert "Traceback" not in result.stderr, f"{where}: traceback:\n{result.stderr[-3000:]}"
            results.append(result)
    finally:
        if teacher is not None:
            teacher.stop()
        for where, server in servers:
            os.killpg(server.pid, signal.SIGINT)
            try:
                _, stderr = server.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                _, stderr = server.communicate()
            assert "Traceback" not in stderr, f"{where}: the server's traceback:\n{stderr[-3000:]}"
    return results


def teacher_stand_in(cwd: Path):
    """The stand-in teacher of ``test-setup: llm`` (see the module doc), serving the gold of the
    CoNLL files in ``cwd/runs/wnut``."""
    from llm_server import LlmServer, replay

    from tagtune.data.formats import read_examples

    gold = [e for path in sorted((cwd / "runs" / "wnut").glob("*.conll")) for e in read_examples(path)]
    return LlmServer(replay(gold, LLM_ERROR_RATE), models=(LLM_MODEL,))


def wait_for(url: str, server: subprocess.Popen, where: str, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"{where}: the server exited ({server.returncode}):\n{server.stderr.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:
            time.sleep(0.3)
    raise AssertionError(f"{where}: {url} did not answer within {seconds:.0f} s")


def json_values(text: str) -> list:
    """Every JSON value printed one after the other (pretty-printed or one per line); lines of
    plain text between them are passed over."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        try:
            value, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            newline = text.find("\n", at)
            at = len(text) if newline < 0 else newline + 1
            continue
        values.append(value)
    return values


# --- what a reader would have -----------------------------------------------------------------

def demo_leftovers(cwd: Path, tweets, tagger: Path | None) -> None:
    """``runs/wnut`` (train 200, dev 60 and test 100 real tweets) and ``runs/wnut-minilm``."""
    data = cwd / "runs" / "wnut"
    data.mkdir(parents=True, exist_ok=True)
    write_conll(data / "train.conll", tweets[:200])
    write_conll(data / "dev.conll", tweets[200:260])
    write_conll(data / "test.conll", tweets[260:360])
    if tagger is not None:
        shutil.copytree(tagger, cwd / "runs" / "wnut-minilm")


def japanese_texts() -> list[str]:
    """The Japanese texts of README.md and the pages, for the stand-in Japanese BERT's vocabulary."""
    sources = [ROOT / "README.md", *doc_pages()]
    found = [t for p in sources for t in re.findall(r'"text": "([^"]+)"', p.read_text(encoding="utf-8"))]
    return [t for t in found if re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", t)]


def japanese_bert(folder: Path) -> Path:
    """A tiny random BERT whose tokenizer is BertJapaneseTokenizer (MeCab with unidic-lite, then
    WordPiece), as cl-tohoku/bert-base-japanese-v3's is, with words and characters from Japanese
    text for its vocabulary."""
    fugashi = pytest.importorskip("fugashi")
    unidic_lite = pytest.importorskip("unidic_lite")
    import torch
    import transformers as T

    mecab = fugashi.GenericTagger(f'-d "{unidic_lite.DICDIR}" -r "{os.path.join(unidic_lite.DICDIR, "mecabrc")}"')
    texts = japanese_texts() + ["東京都内では朝から強い雨が降り、一部の鉄道で運転を見合わせています。",
                                "大阪の本社で新しいサービスを発表した。", "京都の寺を訪ねた。"]
    words = sorted({node.surface for t in texts for node in mecab(unicodedata.normalize("NFKC", t))})
    chars = sorted({c for w in words for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *[c for c in chars if c not in words],
             *[f"##{c}" for c in chars]]
    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token in vocab), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "BertJapaneseTokenizer", "word_tokenizer_type": "mecab",
        "mecab_kwargs": {"mecab_dic": "unidic_lite"}, "subword_tokenizer_type": "wordpiece",
        "do_lower_case": False}), encoding="utf-8")
    torch.manual_seed(0)
    config = T.BertConfig(vocab_size=len(vocab), hidden_size=384, num_hidden_layers=2, num_attention_heads=6,
                          intermediate_size=768, max_position_embeddings=128)
    T.BertForMaskedLM(config).save_pretrained(folder)
    return folder


def japanese_modernbert(folder: Path) -> Path:
    """A tiny random ModernBERT with a SentencePiece-style tokenizer.json (Unigram, byte fallback,
    spaces as ``▁``), as sbintuitions/modernbert-ja-70m has."""
    import torch
    import transformers as T
    from test_tokenizer_modern import write_sentencepiece

    write_sentencepiece(folder, "unigram", "replace")
    tokenizer = T.AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    config = T.ModernBertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=96, local_attention=16,
                                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id, cls_token_id=tokenizer.cls_token_id,
                                sep_token_id=tokenizer.sep_token_id)
    T.ModernBertForMaskedLM(config).save_pretrained(folder)
    return folder
