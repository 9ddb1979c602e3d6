"""A trained tagger folder is an ordinary transformers token-classification model."""

import pytest
import torch

from tagtune import Tagger

transformers = pytest.importorskip("transformers")


def texts_of(sentences):
    return [" ".join(tokens) for tokens, _ in sentences]


def test_saved_weight_names_are_transformers_own(trained_tagger):
    """model.safetensors holds exactly BertForTokenClassification's state_dict keys and shapes,
    the names candle-transformers' BertModel reads as well."""
    from safetensors import safe_open

    with safe_open(str(trained_tagger / "model.safetensors"), "pt") as f:
        saved = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    config = transformers.AutoConfig.from_pretrained(trained_tagger)
    assert config.architectures == ["BertForTokenClassification"]
    reference = transformers.BertForTokenClassification(config).state_dict()
    # non-persistent buffers (position_ids, token_type_ids) are not saved by transformers either
    expected = {k: tuple(v.shape) for k, v in reference.items() if not k.endswith(("position_ids", "token_type_ids"))}
    assert saved == expected
    assert {"bert.embeddings.word_embeddings.weight", "bert.encoder.layer.0.attention.self.query.weight",
            "classifier.weight", "classifier.bias"} <= set(saved)
    model, info = transformers.AutoModelForTokenClassification.from_pretrained(trained_tagger, output_loading_info=True)
    assert type(model).__name__ == "BertForTokenClassification"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


def pipeline_words(tokenizer, text, firsts=None):
    """Word ranges as the token-classification pipeline groups tokens with a WordPiece tokenizer:
    a token whose text differs in length from its characters (a ``##`` piece) joins the word
    before it, an [UNK] never does (transformers TokenClassificationPipeline.gather_pre_entities).
    ``firsts``, a list, receives the index of each word's first token (special tokens not counted)."""
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    words = []
    for k, (token_id, (start, end)) in enumerate(zip(enc["input_ids"], enc["offset_mapping"])):
        token = tokenizer.convert_ids_to_tokens(token_id)
        subword = len(token) != end - start and token_id != tokenizer.unk_token_id
        if subword and words:
            words[-1] = (words[-1][0], end)
        else:
            words.append((start, end))
            if firsts is not None:
                firsts.append(k)
    return words


def argmax_span_probability(probs, labels, i, j, kind):
    """The probability that words i..j-1 are read as exactly one ``kind`` entity when each word's
    tag is drawn on its own from ``probs`` (words x labels), BIO read the conlleval way: the
    entity begins at i (B-kind, or I-kind after a tag of another type or O), I-kind follows up to
    j-1, and word j (if any) is no I-kind."""
    b, inside = labels.index(f"B-{kind}"), labels.index(f"I-{kind}")
    before = probs[i - 1, b] + probs[i - 1, inside] if i > 0 else 0.0
    after = probs[j, inside] if j < len(probs) else 0.0
    return (probs[i, b] + probs[i, inside] * (1 - before)) * probs[i + 1:j, inside].prod() * (1 - after)


def test_pipeline_and_tagtune_give_the_same_spans(trained_tagger, tweets):
    """transformers' pipeline(aggregation_strategy="first") and tagtune with argmax decoding
    mean the same thing: each word takes the argmax label of its first subword, and entities are
    read from those labels the conlleval way. Both give the same spans on real tweets, and
    tagtune's score is the span's probability under transformers' own per-word probabilities
    (each word's tag drawn on its own, as argmax decoding assumes).

    Words agree when tagtune's units (the pre-tokenizer's words) are the pipeline's groups
    (a token starts a word unless it is a ``##`` piece). They differ only where normalisation
    changes a token's length (the pipeline then takes a first piece for a continuation, or the
    reverse); such texts are left out, and they must be few. Texts longer than one tagtune
    window (126 tokens) are left out too: the pipeline sees them whole.
    """
    pipe = transformers.pipeline("token-classification", model=str(trained_tagger), aggregation_strategy="first",
                                 device="cpu")
    tagger = Tagger.load(trained_tagger, device="cpu", constrained=False, bf16="off")
    texts = texts_of(tweets[1000:1200])
    encodings = tagger.tokenizer.encode_batch(texts)
    from tagtune.data.align import units_of

    same = [i for i, (text, enc) in enumerate(zip(texts, encodings))
            if len(enc) <= tagger.settings.max_length - 2
            and units_of(enc).ranges == pipeline_words(pipe.tokenizer, text)]
    assert len(same) >= 0.95 * len(texts), f"only {len(same)} of {len(texts)} texts have the same words"
    chosen = [texts[i] for i in same]
    with torch.inference_mode():
        theirs = pipe(chosen)
    ours = tagger(chosen)
    labels = [pipe.model.config.id2label[k] for k in range(pipe.model.config.num_labels)]
    found = 0
    for text, a, b in zip(chosen, ours, theirs):
        assert [(s.start, s.end, s.label) for s in a] == [(e["start"], e["end"], e["entity_group"]) for e in b], text
        if not a:
            continue
        firsts = []
        words = pipeline_words(pipe.tokenizer, text, firsts)
        with torch.inference_mode():
            logits = pipe.model(**pipe.tokenizer(text, return_tensors="pt")).logits[0, 1:-1]
        probs = logits.double().softmax(-1)[firsts].numpy()  # each word's first token
        for span in a:
            i = next(k for k, (start, _) in enumerate(words) if start == span.start)
            j = next(k for k, (_, end) in enumerate(words) if end == span.end) + 1
            assert span.score == pytest.approx(argmax_span_probability(probs, labels, i, j, span.label), abs=1e-4)
        found += len(a)
    assert found >= 20  # real entities were compared, not only empty lists
