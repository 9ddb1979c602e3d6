"""Logits equal transformers' for every supported family, through the packed and padded paths."""

import pytest
import torch
import transformers

from tagtune.checkpoint import load_model
from tagtune.model import Packing
from tagtune.tokenizer import load_tokenizer

from conftest import tiny_hf_model

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
    with pytest.raises(ValueError, match="at least one token"):
        Packing.from_cu_seqlens(torch.tensor([0, 3, 3]))


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
