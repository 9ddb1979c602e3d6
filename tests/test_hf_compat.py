"""A trained tagger folder is an ordinary transformers token-classification model."""

import pytest
import torch

from tagtune.tagger import Tagger

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


def pipeline_words(tokenizer, text):
    """Word ranges as the token-classification pipeline groups tokens with a WordPiece tokenizer:
    a token whose text differs in length from its characters (a ``##`` piece) joins the word
    before it, an [UNK] never does (transformers TokenClassificationPipeline.gather_pre_entities)."""
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
    words = []
    for token_id, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
        token = tokenizer.convert_ids_to_tokens(token_id)
        subword = len(token) != end - start and token_id != tokenizer.unk_token_id
        if subword and words:
            words[-1] = (words[-1][0], end)
        else:
            words.append((start, end))
    return words


def test_pipeline_and_tagtune_give_the_same_spans(trained_tagger, tweets):
    """transformers' pipeline(aggregation_strategy="first") and tagtune with argmax decoding
    mean the same thing: each word takes the argmax label of its first subword, and entities are
    read from those labels the conlleval way. Both give the same spans on real tweets.

    Words agree when tagtune's units (the pre-tokenizer's words) are the pipeline's groups
    (a token starts a word unless it is a ``##`` piece). They differ only where normalisation
    changes a token's length (the pipeline then takes a first piece for a continuation, or the
    reverse); such texts are left out, and they must be few. Texts longer than one tagtune
    window (126 tokens) are left out too: the pipeline sees them whole.
    """
    pipe = transformers.pipeline("token-classification", model=str(trained_tagger), aggregation_strategy="first",
                                 device="cpu")
    tagger = Tagger.load(trained_tagger, device="cpu", constrained=False)
    texts = texts_of(tweets[1000:1200])
    encodings = tagger.tokenizer.encode_batch(texts)
    from tagtune.align import units_of

    same = [i for i, (text, enc) in enumerate(zip(texts, encodings))
            if len(enc) <= tagger.settings.max_length - 2
            and units_of(enc).ranges == pipeline_words(pipe.tokenizer, text)]
    assert len(same) >= 0.95 * len(texts), f"only {len(same)} of {len(texts)} texts have the same words"
    chosen = [texts[i] for i in same]
    with torch.inference_mode():
        theirs = pipe(chosen)
    ours = tagger(chosen)
    found = 0
    for text, a, b in zip(chosen, ours, theirs):
        assert [(s.start, s.end, s.label) for s in a] == [(e["start"], e["end"], e["entity_group"]) for e in b], text
        assert [s.score for s in a] == pytest.approx([float(e["score"]) for e in b], abs=1e-4)
        found += len(a)
    assert found >= 20  # real entities were compared, not only empty lists
