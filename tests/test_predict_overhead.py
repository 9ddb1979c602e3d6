"""What prediction does to save time changes no result: chunks tagged with tokenising and
decoding overlapped give the spans of chunk-by-chunk prediction, a model loaded without its random
initialisation gives the same logits, and `python -m tagtune predict` (which leaves through
os._exit) writes the same file as the CLI run in-process, runs the atexit handlers and exits 0."""

import subprocess
import sys

import pytest
import torch

from tagtune.errors import TagtuneError
from tagtune.inference.tagger import Tagger
from tagtune.models.checkpoint import load_model, read_weights, to_tagtune_names
from tagtune.models.config import read_config
from tagtune.models.packed import TokenClassifier


@pytest.fixture(scope="module")
def tagger(tiny_tagger):
    """The tiny tagger with its classifier's weights scaled up: after one epoch it tags nearly
    everything O, and spans are what is compared."""
    tagger = Tagger.load(tiny_tagger, device="cpu", bf16="off")
    with torch.no_grad():
        tagger.model.classifier.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))
    return tagger


@pytest.fixture(scope="module")
def texts(tweets):
    texts = [" ".join(tokens) for tokens, _ in tweets[:50]]
    return texts + ["", " ".join(texts[:12])]  # no tokens at all; several windows


def test_overlapped_chunks_give_the_spans_of_each_chunk(tagger, texts):
    chunks = [texts[lo:lo + 20] for lo in range(0, len(texts), 20)]
    expected = [tagger.predict(chunk) for chunk in chunks]
    assert any(spans for chunk in expected for spans in chunk)  # real spans compared, not only empty lists
    assert list(tagger.predict_chunks(chunks)) == expected
    assert list(tagger.predict_chunks([])) == []


def test_an_error_taking_a_chunk_comes_after_the_spans_before_it(tagger, texts):

    def chunks():
        yield texts[:10]
        yield texts[10:20]
        raise TagtuneError("input.txt:21: not valid JSON")

    got = []
    with pytest.raises(TagtuneError, match="input.txt:21"):
        for spans in tagger.predict_chunks(chunks()):
            got.append(spans)
    assert got == [tagger.predict(texts[:10]), tagger.predict(texts[10:20])]
    with pytest.raises(TagtuneError, match="text 1 is a int"):
        list(tagger.predict_chunks([["a text", 3]]))


def test_loaded_model_has_the_logits_of_a_randomly_initialised_one_filled(tiny_tagger):
    model, _ = load_model(tiny_tagger)
    config = model.config
    reference = TokenClassifier(config)  # built as before: random weights, then the checkpoint's copied in
    state, _ = to_tagtune_names(read_weights(tiny_tagger), config, keep_classifier=True)
    reference.load_state_dict(state)
    reference.eval()
    ids = torch.randint(5, config.vocab_size, (23,))
    cu = torch.tensor([0, 9, 23])
    with torch.inference_mode():
        torch.testing.assert_close(model(ids, cu, 14), reference(ids, cu, 14), rtol=0, atol=0)
    assert all(p.requires_grad and p.dtype == torch.float32 for p in model.parameters())


def test_a_new_head_is_initialised_not_left_empty(tiny_tagger):
    std = read_config(tiny_tagger).initializer_range
    model, report = load_model(tiny_tagger, labels=["O", "B-X", "I-X"])
    assert report.new_head
    weight, bias = model.classifier.weight, model.classifier.bias
    assert torch.isfinite(weight).all() and torch.equal(bias, torch.zeros_like(bias))
    assert 0.5 * std < weight.std().item() < 1.5 * std


def test_module_predict_exits_through_quick_exit_with_the_same_output(tiny_tagger, texts, tmp_path, cli):
    source = tmp_path / "texts.txt"
    source.write_text("".join(t + "\n" for t in texts[:-2]), encoding="utf-8")  # the empty text is no line
    assert cli("predict", str(tiny_tagger), str(source), "-o", str(tmp_path / "in-process.jsonl"),
               "--quiet").returncode == 0
    marker = tmp_path / "atexit-ran"
    script = ("import atexit, sys; from pathlib import Path\n"
              f"atexit.register(lambda: Path({str(marker)!r}).write_text('yes'))\n"
              f"sys.argv = ['tagtune', 'predict', {str(tiny_tagger)!r}, {str(source)!r}, "
              f"'-o', {str(tmp_path / 'process.jsonl')!r}, '--quiet']\n"
              "import tagtune.__main__ as entry\n"
              "entry.quick_exit = (lambda quick: lambda: (print('quick exit', flush=True), quick()))(entry.quick_exit)\n"
              "raise SystemExit(entry.console())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "quick exit\n"  # it left through quick_exit, not the interpreter's own exit
    assert marker.read_text() == "yes"
    assert (tmp_path / "process.jsonl").read_bytes() == (tmp_path / "in-process.jsonl").read_bytes()
