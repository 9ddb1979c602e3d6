"""The spaCy component: ``nlp.add_pipe("tagtune", config={"model": DIR})`` with a real MiniLM
tagger (and a small span tagger for overlapping spans), against the tagger's own spans."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest

spacy = pytest.importorskip("spacy", reason="the spacy extra is not installed (pip install -e '.[spacy]')")

from spacy.tokens import Span  # noqa: E402

from tagtune import Tagger, TagtuneError  # noqa: E402
from tagtune.apps.spacy_component import SCORE, score_of  # noqa: E402
from test_span_nested import MAX_WIDTH, NESTED, train_nested  # noqa: E402

TEXTS = 200  # the first tweets: among them, spans the spaCy tokenizer does not split as the tagger does


def pipeline(model, **config):
    nlp = spacy.blank("en")
    nlp.add_pipe("tagtune", config={"model": str(model), "device": "cpu", "bf16": "off", **config})
    return nlp


def spans_of(doc, key="tagtune"):
    return [(s.start_char, s.end_char, s.label_) for s in doc.spans[key]]


def ents_of(doc):
    return [(e.start_char, e.end_char, e.label_) for e in doc.ents]


def scores_of(spans):
    """The spans' scores, equal up to float noise (other batches sum in another order)."""
    return pytest.approx([s._.tagtune_score for s in spans], abs=1e-5)


def check_ents(doc):
    """doc.ents: all of doc.spans when none overlap; else a subset without overlaps, each span
    left out overlapping an entity that comes before it (longer, or as long and earlier)."""
    spans, ents = list(doc.spans["tagtune"]), list(doc.ents)
    overlapping = any(a.end > b.start for a, b in zip(spans, spans[1:]))
    if not overlapping:
        assert ents == spans
        return
    assert set(ents) <= set(spans) and all(a.end <= b.start for a, b in zip(ents, ents[1:]))

    def rank(s):
        return (-len(s), s.start)

    for span in set(spans) - set(ents):
        assert any(e.start < span.end and span.start < e.end and rank(e) < rank(span) for e in ents), span


@pytest.fixture(scope="module")
def texts(tweets):
    return [" ".join(tokens) for tokens, _ in tweets[:TEXTS]]


@pytest.fixture(scope="module")
def predicted(trained_tagger, texts):
    return Tagger.load(trained_tagger, device="cpu", bf16="off").predict(texts)


@pytest.fixture(scope="module")
def nlp(trained_tagger):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield pipeline(trained_tagger)


@pytest.fixture(scope="module")
def docs(nlp, texts):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(nlp.pipe(texts, batch_size=64))


def test_ents_are_the_taggers_spans_on_the_tokens(docs, predicted):
    aligned = widened = 0
    for doc, found in zip(docs, predicted):
        expected = {}
        for s in found:
            span = doc.char_span(s.start, s.end, alignment_mode="expand")
            widened += doc.char_span(s.start, s.end) is None
            key = (span.start_char, span.end_char, s.label)
            expected[key] = max(expected.get(key, 0.0), s.score)  # spans widened onto one token keep the best
        assert spans_of(doc) == sorted(expected)
        assert [expected[key] for key in sorted(expected)] == scores_of(doc.spans["tagtune"])
        check_ents(doc)
        for s in found:
            if doc.char_span(s.start, s.end) is not None:  # the tokens agree: the tagger's span as it is
                aligned += 1
                assert (s.start, s.end, s.label) in ents_of(doc)
    assert aligned > 30 and widened > 0


def test_a_span_that_cuts_a_token_is_widened_and_warned_of_once(trained_tagger, texts, predicted):
    nlp = pipeline(trained_tagger)
    cutting = [i for i, found in enumerate(predicted) for s in found
               if nlp.make_doc(texts[i]).char_span(s.start, s.end) is None]
    assert cutting
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = nlp(texts[cutting[0]])
        list(nlp.pipe([texts[i] for i in sorted(set(cutting))]))
    assert [str(w.message) for w in caught] == [
        f"spaCy component 'tagtune': {cutting.count(cutting[0])} of {len(predicted[cutting[0]])} spans widened to "
        f"whole tokens, as the spaCy tokenizer splits these texts differently from the tagger's (later ones are "
        f"counted in .widened and .dropped, not warned of)"]
    component = nlp.get_pipe("tagtune")
    assert (component.widened, component.dropped) == (cutting.count(cutting[0]) + len(cutting), 0)
    for s in predicted[cutting[0]]:  # each tagger span lies within one of the doc's, of its label
        assert any(span.start_char <= s.start and s.end <= span.end_char and span.label_ == s.label
                   for span in first.spans["tagtune"])


def test_pipe_in_batches_gives_what_one_doc_at_a_time_gives(nlp, texts, docs):
    tagged = [i for i, doc in enumerate(docs) if doc.ents][:20]
    assert len(tagged) >= 10
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one_by_one = [nlp(texts[i]) for i in tagged]
        batched = list(nlp.pipe([texts[i] for i in tagged], batch_size=7))
    assert [ents_of(d) for d in batched] == [ents_of(d) for d in one_by_one] == [ents_of(docs[i]) for i in tagged]
    assert [spans_of(d) for d in batched] == [spans_of(d) for d in one_by_one]
    for a, b in zip(batched, one_by_one):
        assert [s._.tagtune_score for s in a.spans["tagtune"]] == scores_of(b.spans["tagtune"])


def test_saved_and_loaded_with_spacy_load(nlp, texts, docs, tmp_path):
    nlp.to_disk(tmp_path / "pipeline")
    assert "tagtune" in (tmp_path / "pipeline" / "config.cfg").read_text()
    loaded = spacy.load(tmp_path / "pipeline")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = list(loaded.pipe(texts[:20]))
    assert loaded.pipe_names == ["tagtune"]
    assert [ents_of(d) for d in again] == [ents_of(d) for d in docs[:20]]


def test_the_entry_point_finds_the_factory_without_importing_tagtune(trained_tagger, texts, docs):
    i = next(i for i, doc in enumerate(docs) if len(doc.ents) > 1)
    script = (
        "import json, sys, spacy\n"
        "nlp = spacy.blank('en')\n"
        f"nlp.add_pipe('tagtune', config={{'model': {str(trained_tagger)!r}, 'device': 'cpu', 'bf16': 'off'}})\n"
        f"doc = nlp({texts[i]!r})\n"
        "print(json.dumps([(e.start_char, e.end_char, e.label_) for e in doc.ents]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [list(e) for e in ents_of(docs[i])]


@pytest.fixture(scope="module")
def span_folder(tiny_bert, tmp_path_factory):
    """A span tagger folder: the small BERT and span head test_span_nested trains on nested spans."""
    from tagtune.models.checkpoint import write_model_files, write_safetensors
    from tagtune.store.layout import SPAN_HEAD_FILE, TaggerSettings, settings_files

    trained = train_nested(tiny_bert)
    folder = tmp_path_factory.mktemp("span-tagger")
    write_safetensors(folder / SPAN_HEAD_FILE, trained.head.state_dict(), {"format": "pt"})
    write_model_files(trained.model, trained.tokenizer, folder,
                      settings_files(TaggerSettings(head="span", max_span_words=MAX_WIDTH, labels=trained.labels)))
    return folder


def test_overlapping_spans_go_to_doc_spans_and_a_subset_to_ents(span_folder):
    nlp = pipeline(span_folder, spans_key="nested")
    tagger = Tagger.load(span_folder, device="cpu", bf16="off")
    texts = [text for text, _ in NESTED]
    nested = 0
    for doc, found in zip(nlp.pipe(texts), tagger.predict(texts)):
        spans = spans_of(doc, "nested")
        assert spans == [(s.start, s.end, s.label) for s in found]  # whole words: the tokens agree
        assert [s.score for s in found] == scores_of(doc.spans["nested"])
        assert "tagtune" not in doc.spans
        doc.spans["tagtune"] = doc.spans["nested"]
        check_ents(doc)
        nested += len(doc.ents) < len(spans)
    assert nested >= 4
    doc = nlp("University of Tokyo is big")
    assert [(e.text, e.label_) for e in doc.ents] == [("University of Tokyo", "ORG")]  # the longest
    assert [(s.text, s.label_) for s in doc.spans["nested"]] == [("University of Tokyo", "ORG"), ("Tokyo", "LOC")]


def test_scores_are_an_extension_that_is_registered_once(nlp):
    assert Span.get_extension(SCORE)[2] is score_of
    doc = nlp.make_doc("Nothing was tagged here")
    assert doc[0:2]._.tagtune_score is None
    Span.remove_extension(SCORE)
    try:
        Span.set_extension(SCORE, default="theirs")
        pipeline(nlp.get_pipe("tagtune").model)  # another component leaves the extension as it is
        assert Span.get_extension(SCORE) == ("theirs", None, None, None)
    finally:
        Span.remove_extension(SCORE)
        Span.set_extension(SCORE, getter=score_of)


@pytest.mark.parametrize("config, message", [
    ({"model": "no/such/folder/here"}, r"^spaCy component 'tagtune': no/such/folder/here: "),
    ({}, r"^spaCy component 'tagtune': no model; give a tagger folder or Hub id"),
    ({"min_score": 2.0}, r"^spaCy component 'tagtune': min_score must be a number from 0 to 1, got 2\.0$"),
    ({"batch_size": 0}, r"^spaCy component 'tagtune': batch_size must be a positive integer, got 0$"),
])
def test_a_model_that_cannot_be_loaded_is_one_line_at_add_pipe(trained_tagger, config, message):
    nlp = spacy.blank("en")
    with pytest.raises(TagtuneError, match=message) as caught:
        nlp.add_pipe("tagtune", config={"model": str(trained_tagger), **config} if config else config)
    assert "\n" not in str(caught.value)


def test_a_folder_that_is_not_a_tagger(wnut_files):
    with pytest.raises(TagtuneError, match=rf"^spaCy component 'tagtune': {wnut_files}: no config\.json"):
        spacy.blank("en").add_pipe("tagtune", config={"model": str(wnut_files)})
