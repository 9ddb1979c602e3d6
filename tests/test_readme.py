"""The README's examples run as written: its shell blocks are taken from README.md and run by
bash in an empty folder, with `tagtune` on PATH as `source .venv/bin/activate` puts it there.

The Hub ids they name are served by the stand-in Hub (tests/hub_server.py, HF_ENDPOINT):
sentence-transformers/all-MiniLM-L6-v2 is the packaged all-MiniLM-L6-v2, and
cl-tohoku/bert-base-japanese-v3 a tiny random BERT built here with that model's tokenizer
settings (MeCab + WordPiece) and a vocabulary learnt from Japanese text.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from hub_server import HubServer
from tagtune.apps.examples import write_conll

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def shell_block(heading: str) -> str:
    """The first ```sh block after ``heading`` (a whole heading line) in the README."""
    at = re.search(rf"^#+ {re.escape(heading)}$", README, re.M)
    assert at, f"README has no heading {heading!r}"
    block = re.compile(r"^```sh\n(.*?)^```$", re.M | re.S).search(README, at.end())
    assert block, f"README has no sh block after {heading!r}"
    return block.group(1)


def run_block(script: str, cwd: Path, hub: HubServer) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HOME=str(cwd.parent / "hf-home"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, f"README block failed:\n{script}\n--- stderr:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    return result


def json_values(text: str) -> list:
    """Every JSON value printed one after the other (pretty-printed or one per line)."""
    decoder, values, at = json.JSONDecoder(), [], 0
    while text[at:].strip():
        at += len(text[at:]) - len(text[at:].lstrip())
        value, at = decoder.raw_decode(text, at)
        values.append(value)
    return values


def japanese_bert(folder: Path) -> Path:
    """A tiny random BERT whose tokenizer is BertJapaneseTokenizer (MeCab with unidic-lite, then
    WordPiece), as cl-tohoku/bert-base-japanese-v3's is, with words and characters from Japanese
    text for its vocabulary."""
    fugashi = pytest.importorskip("fugashi")
    unidic_lite = pytest.importorskip("unidic_lite")
    import torch
    import transformers as T

    mecab = fugashi.GenericTagger(f'-d "{unidic_lite.DICDIR}" -r "{os.path.join(unidic_lite.DICDIR, "mecabrc")}"')
    texts = [block for block in re.findall(r'"text": "([^"]+)"', shell_block("Japanese"))]
    texts += ["東京都内では朝から強い雨が降り、一部の鉄道で運転を見合わせています。",
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


@pytest.fixture(scope="module")
def hub(minilm, tmp_path_factory):
    with HubServer() as server:
        server.add("sentence-transformers/all-MiniLM-L6-v2", minilm)
        server.add("cl-tohoku/bert-base-japanese-v3", japanese_bert(tmp_path_factory.mktemp("ja") / "model"))
        server.add("sbintuitions/modernbert-ja-70m", japanese_modernbert(tmp_path_factory.mktemp("ja-mb") / "model"))
        yield server


def test_train_evaluate_predict(hub, tweets, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    write_conll(work / "train.conll", tweets[:300])
    write_conll(work / "test.conll", tweets[300:400])
    texts = [" ".join(tokens) for tokens, _ in tweets[400:450]]
    (work / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")

    result = run_block(shell_block("Train, evaluate, predict"), work, hub)

    assert "model.safetensors" in hub.downloads("sentence-transformers/all-MiniLM-L6-v2")
    assert (work / "my-tagger" / "model.safetensors").is_file()
    trained, evaluation, echoed = json_values(result.stdout)
    assert trained["out"] == "my-tagger"
    assert {"precision", "recall", "f1"} <= set(evaluation)
    spans = json_values((work / "spans.jsonl").read_text(encoding="utf-8"))
    assert [r["text"] for r in spans] == texts
    for record in spans:
        assert all(record["text"][s["start"]:s["end"]] == s["text"] for s in record["spans"])
    assert echoed["text"] == "Barack Obama visited Lisbon"


def test_keyword_extraction(hub, tmp_path):
    shown = json.loads(re.compile(r"^```json\n(.*?)^```$", re.M | re.S)
                       .search(README, README.index("### Keyword extraction")).group(1))
    result = run_block(shell_block("Keyword extraction"), tmp_path, hub)
    answer = json_values(result.stdout)[-1]
    assert answer["text"] == shown["text"]
    assert [(s["start"], s["end"], s["label"], s["text"]) for s in answer["spans"]] == \
        [(s["start"], s["end"], s["label"], s["text"]) for s in shown["spans"]]


def test_japanese(hub, tmp_path):
    result = run_block(shell_block("Japanese"), tmp_path, hub)
    assert "vocab.txt" in hub.downloads("cl-tohoku/bert-base-japanese-v3")
    answer = json_values(result.stdout)[-1]
    assert answer["text"] == "京都タワーは下京区にあります。"
    assert answer["spans"], "the tagger found nothing"
    for span in answer["spans"]:
        assert span["label"] == "KEY"
        assert answer["text"][span["start"]:span["end"]] == span["text"]


def test_japanese_modernbert(hub, tmp_path):
    result = run_block(shell_block("Japanese without MeCab: ModernBERT-ja"), tmp_path, hub)
    assert "tokenizer.json" in hub.downloads("sbintuitions/modernbert-ja-70m")
    line = json_values(result.stdout)[-1]
    assert line["text"] == "名古屋タワーは中区にあります。"
    for span in line["spans"]:
        assert line["text"][span["start"]:span["end"]] == span["text"] and span["label"] == "KEY"
    config = json.loads((tmp_path / "ja-modernbert" / "config.json").read_text())
    assert config["architectures"] == ["ModernBertForTokenClassification"]
