"""Logits equal transformers' for every supported family, through the packed and padded paths."""

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import transformers

from tagtune.models.checkpoint import load_model
from tagtune.models.packed import Packing, packed_attention
from tagtune.models.packed import MAX_RUNS, _padded_attention, _runs_attention, equal_length_runs
from tagtune.text.tokenizer import load_tokenizer

from conftest import tiny_hf_model, tiny_with_minilm_tokenizer

FAMILIES = ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "modernbert"]


def padded_batch(lengths, vocab=99, low=5):
    ids = torch.randint(low, vocab, (len(lengths), max(lengths)))
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return ids, mask


def pack(ids, mask):
    lengths = mask.sum(1)
    return ids[mask.bool()], torch.nn.functional.pad(lengths.cumsum(0), (1, 0))


def assert_logits_match(ref, model, lengths):
    """``model`` gives ``ref``'s logits, packed and padded, on random texts of these lengths."""
    ids, mask = padded_batch(lengths)
    real = mask.bool()
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).logits[real]
        padded = model.forward_padded(ids, mask)[real]
        flat, cu_seqlens = pack(ids, mask)
        packed = model(flat, cu_seqlens)
    for ours in (padded, packed):
        torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


def assert_config_refused(ref, folder, change: dict, message: str):
    """``ref`` saved in ``folder`` with ``change`` made to its config.json: read_config refuses it
    in one line naming the file, containing ``message``."""
    import json

    from tagtune.models.config import read_config
    from tagtune import TagtuneError

    ref.save_pretrained(folder)
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(TagtuneError) as error:
        read_config(folder)
    text = str(error.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text, text


def assert_gradients_match(ref, folder, lengths):
    """tagtune's model of ``folder`` gives ``ref``'s loss and gradients (by checkpoint name) on
    random texts of these lengths."""
    from tagtune.models.checkpoint import to_checkpoint_names

    model, _ = load_model(folder)
    ids, mask = padded_batch(lengths)
    targets = torch.randint(0, model.config.num_labels, ids.shape)
    real = mask.bool()
    ref_loss = torch.nn.functional.cross_entropy(ref(input_ids=ids, attention_mask=mask).logits[real], targets[real])
    ref_loss.backward()
    flat, cu_seqlens = pack(ids, mask)
    loss = torch.nn.functional.cross_entropy(model(flat, cu_seqlens), targets[real])
    loss.backward()
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=0)
    grads = to_checkpoint_names({n: p.grad for n, p in model.named_parameters()}, model.config)
    expected = {n: p.grad for n, p in ref.named_parameters()}
    assert set(grads) == set(expected)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("kind", FAMILIES)
def test_tiny_random_model_matches_transformers(kind, tmp_path):
    ref = tiny_hf_model(kind)
    ref.save_pretrained(tmp_path)
    model, report = load_model(tmp_path)
    assert not report.new_head and report.dropped == []
    ids, mask = padded_batch([23, 11, 7, 3, 1])
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).logits
        padded = model.forward_padded(ids, mask)
        flat_ids, cu_seqlens = pack(ids, mask)
        packed = model(flat_ids, cu_seqlens)
    real = mask.bool()
    torch.testing.assert_close(padded[real], expected[real], atol=1e-4, rtol=0)
    torch.testing.assert_close(packed, expected[real], atol=1e-4, rtol=0)


def test_electra_projects_small_embeddings(tmp_path):
    tiny_hf_model("electra").save_pretrained(tmp_path)
    model, _ = load_model(tmp_path)
    assert model.embeddings_project is not None
    assert model.embeddings.word_embeddings.weight.shape == (99, 16)


REAL_SENTENCES = [
    "The Eiffel Tower in Paris was completed in 1889.",
    "Apple announced a new iPhone at its Cupertino headquarters on Tuesday.",
    "Café owners in São Paulo say the naïve résumé trend won't last.",
    "I can't believe @nytimes still hasn't covered #WorldCup2026 properly lol",
]


def test_minilm_matches_transformers_on_real_text(minilm, tweets):
    texts = REAL_SENTENCES + [" ".join(tokens) for tokens, _ in tweets[:12]]
    hf_tok = transformers.AutoTokenizer.from_pretrained(minilm)
    batch = hf_tok(texts, padding=True, return_tensors="pt")
    torch.manual_seed(0)
    ref = transformers.AutoModelForTokenClassification.from_pretrained(minilm, num_labels=7).eval()
    model, report = load_model(minilm, labels=[f"L{i}" for i in range(7)])
    assert report.new_head and report.dropped == ["pooler.dense.bias", "pooler.dense.weight"]
    # Same head weights on both sides: the encoder is what is compared.
    model.classifier.load_state_dict(ref.classifier.state_dict())

    tokenizer = load_tokenizer(minilm)
    encodings = tokenizer.encode_batch(texts, add_special_tokens=True)
    for row, enc in enumerate(encodings):  # our ids are transformers' ids
        n = int(batch["attention_mask"][row].sum())
        assert enc.ids == batch["input_ids"][row, :n].tolist()

    with torch.no_grad():
        expected = ref(**batch).logits
        padded = model.forward_padded(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        ids = torch.tensor([i for e in encodings for i in e.ids])
        cu_seqlens = torch.tensor([0] + [len(e) for e in encodings]).cumsum(0)
        packed = model(ids, cu_seqlens)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(padded[real], expected[real], atol=1e-4, rtol=0)
    torch.testing.assert_close(packed, expected[real], atol=1e-4, rtol=0)


def test_packing_layout():
    packing = Packing.from_cu_seqlens(torch.tensor([0, 3, 5, 6]))
    assert packing.positions.tolist() == [0, 1, 2, 0, 1, 0]
    assert packing.max_seqlen == 3
    assert packing.slots.tolist() == [0, 1, 2, 3, 4, 6]
    assert packing.key_mask[:, 0, 0].tolist() == [[True, True, True], [True, True, False], [True, False, False]]
    assert packing.runs == [(0, 1, 3), (3, 1, 2), (5, 1, 1)]
    assert equal_length_runs([4, 4, 2, 2, 2, 4]) == [(0, 2, 4), (8, 3, 2), (14, 1, 4)]
    with pytest.raises(ValueError, match="at least one token"):
        Packing.from_cu_seqlens(torch.tensor([0, 3, 3]))


def test_attention_by_runs_equals_the_padded_layout():
    """Runs of equal-length sequences attended as views give the padded layout's outputs and
    gradients, and a batch of more runs than MAX_RUNS takes the padded layout."""
    torch.manual_seed(0)
    lengths = [6, 6, 6, 4, 4, 9, 1, 4]
    packing = Packing.from_cu_seqlens(torch.tensor([0, *lengths]).cumsum(0))
    assert len(packing.runs) == 5
    q, k, v = (torch.randn(sum(lengths), 3, 8, requires_grad=True) for _ in range(3))
    grad = torch.randn(sum(lengths), 3, 8)
    results = []
    for attend in (_runs_attention, _padded_attention):
        args = (packing.runs, 0.0) if attend is _runs_attention else (packing, 0.0, None)
        out = attend(q, k, v, *args)
        results.append((out, *torch.autograd.grad(out, (q, k, v), grad)))
    for ours, padded in zip(*results):
        torch.testing.assert_close(ours, padded, atol=1e-6, rtol=1e-5)
    for cu_seqlens in (packing.cu_seqlens, torch.arange(MAX_RUNS + 2).cumsum(0)):  # 5 runs; MAX_RUNS + 1 runs
        cu = cu_seqlens.tolist()
        q, k, v = (torch.randn(cu[-1], 3, 8) for _ in range(3))
        expected = torch.cat([F.scaled_dot_product_attention(*(x[a:b].transpose(0, 1) for x in (q, k, v))).transpose(0, 1)
                              for a, b in zip(cu, cu[1:])])
        torch.testing.assert_close(packed_attention(q, k, v, Packing.from_cu_seqlens(cu_seqlens), 0.0), expected)


def test_dropout_is_active_in_training(minilm):
    model, _ = load_model(minilm, labels=["O", "B-X", "I-X"])
    tokenizer = load_tokenizer(minilm)
    enc = tokenizer.encode(REAL_SENTENCES[0], add_special_tokens=True)
    ids, cu = torch.tensor(enc.ids), torch.tensor([0, len(enc)])
    model.train()
    a, b = model(ids, cu), model(ids, cu)
    assert (a - b).abs().max() > 1e-3
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids, cu), model(ids, cu), atol=0, rtol=0)


def test_loss_goes_down_on_a_real_batch(minilm, tweets):
    """A few steps on 16 real tweets (first subword labelled) with dropout on lower the loss."""
    batch = tweets[:16]
    labels = sorted({t for _, tags in batch for t in tags})
    model, _ = load_model(minilm, labels=labels)
    tokenizer = load_tokenizer(minilm)
    ids, targets, lengths = [], [], []
    for tokens, tags in batch:
        text, spans = "", []
        for token, tag in zip(tokens, tags):
            spans.append((len(text), tag))
            text += token + " "
        enc = tokenizer.encode(text, add_special_tokens=True)
        starts = dict(spans)
        ids += enc.ids
        targets += [labels.index(starts[s]) if s in starts and not sp else -100
                    for (s, _), sp in zip(enc.offsets, enc.special)]
        lengths.append(len(enc))
    ids, targets = torch.tensor(ids), torch.tensor(targets)
    cu = torch.tensor([0] + lengths).cumsum(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4)
    model.train()
    losses = []
    for _ in range(12):
        loss = torch.nn.functional.cross_entropy(model(ids, cu), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


NEW_FAMILIES = {"modernbert": "ModernBertForTokenClassification", "deberta-v2": "DebertaV2ForTokenClassification"}


@pytest.mark.parametrize("bf16", ["off", "on"])
@pytest.mark.parametrize("kind", list(NEW_FAMILIES))
def test_trains_predicts_and_loads_in_transformers(kind, wnut_files, tmp_path, bf16):
    """A real (tiny) training run, in fp32 and in bf16, gives a folder transformers loads with
    tagtune's logits."""
    import tagtune

    model_dir = tiny_with_minilm_tokenizer(tmp_path / "base", kind)
    out = tmp_path / "tagger"
    result = tagtune.train(model=str(model_dir), train=str(wnut_files / "train.conll"), out=str(out), epochs=2,
                           lr=3e-3, max_length=64, progress=False, device="cpu", bf16=bf16)
    assert math.isfinite(result["train_loss"]), result  # neither NaN nor infinite
    tagger = tagtune.Tagger.load(out)
    text = "Heading to New York with Barack Obama tomorrow , then Paris and London ."
    predicted = tagger.predict([text])[0]
    assert all(text[s["start"]:s["end"]] == s["text"] for s in predicted)
    ref, info = transformers.AutoModelForTokenClassification.from_pretrained(out, output_loading_info=True)
    assert type(ref).__name__ == NEW_FAMILIES[kind]
    assert not info["missing_keys"] and not info["unexpected_keys"]
    batch = transformers.AutoTokenizer.from_pretrained(out)([text], return_tensors="pt")
    ours, _ = load_model(out)
    with torch.no_grad():
        expected = ref.eval()(**batch).logits[0]
        torch.testing.assert_close(ours(batch["input_ids"][0], torch.tensor([0, batch["input_ids"].shape[1]])),
                                   expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", list(NEW_FAMILIES))
def test_max_length_above_the_positions_is_refused(kind, wnut_files, tmp_path, cli):
    model_dir = tiny_with_minilm_tokenizer(tmp_path / "base", kind, max_position_embeddings=64)
    result = cli("train", "--model", str(model_dir), "--train", str(wnut_files / "train.conll"),
                 "--out", str(tmp_path / "tagger"), "--max-length", "100", "--quiet")
    assert result.returncode == 1
    assert "--max-length 100 is more than the model's 64 positions" in result.stderr, result.stderr
    assert not (tmp_path / "tagger").exists()


@pytest.mark.parametrize("kind", list(NEW_FAMILIES))
def test_a_tokenizer_larger_than_the_embedding_is_refused(kind, tmp_path, cli):
    model_dir = tiny_with_minilm_tokenizer(tmp_path / "base", kind, vocab_size=1000)  # the tokenizer has 30,522 ids
    result = cli("info", str(model_dir))
    assert result.returncode == 1 and result.stdout == ""
    assert "the tokenizer has ids up to 30521 but the model's word embedding has 1000 rows" in result.stderr


def test_counting_parameters_builds_nothing_and_imports_no_compiler(minilm):
    """read_config's memory check counts the parameters on the meta device without running the
    initialisers (which there import torch._dynamo and sympy: a second of start-up)."""
    code = ("import sys; from tagtune.models.config import read_config; from tagtune.models.packed import parameter_count; "
            f"c = read_config({str(minilm)!r}); print(parameter_count(c), 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    model, _ = load_model(minilm)
    assert out == [str(model.num_parameters()), "False"]
