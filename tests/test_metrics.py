"""Tagging schemes and entity metrics, with seqeval as the reference."""

import math
import random
import warnings

import pytest
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB1, IOB2, IOBES, Tokens

from tagtune import TagtuneError
from tagtune.data.metrics import entity_scores, span_scores
from tagtune.data.schemes import SCHEMES, entities_from_tags, tag_names, tags_for_entities, transition_mask
from tagtune import Span

SEQEVAL_SCHEME = {"BIO": IOB2, "BIOES": IOBES, "IO": IOB1}
TYPES = ["LOC", "MISC", "PER"]

pytestmark = pytest.mark.filterwarnings("ignore")  # seqeval's UndefinedMetricWarning / empty means


# --- seqeval as the reference -------------------------------------------------------------

def seqeval_entities(tags, scheme, strict):
    if strict:
        return [(e.start, e.end, e.tag) for e in Tokens(list(tags), SEQEVAL_SCHEME[scheme]).entities]
    return [(start, end + 1, kind) for kind, start, end in get_entities(list(tags))]


def seqeval_scores(gold, pred, scheme, strict):
    kw = {"mode": "strict", "scheme": SEQEVAL_SCHEME[scheme]} if strict else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = classification_report(gold, pred, output_dict=True, **kw)
        micro = [fn(gold, pred, **kw) for fn in (precision_score, recall_score, f1_score)]
        macro = [fn(gold, pred, average="macro", **kw) for fn in (precision_score, recall_score, f1_score)]
    return report, micro, macro


def same(ours, theirs):
    theirs = float(theirs)
    if math.isnan(theirs):  # seqeval's macro mean over no labels; tagtune gives 0
        return ours == 0.0
    return ours == pytest.approx(theirs, rel=1e-12, abs=1e-15)


def assert_matches_seqeval(gold, pred, scheme, strict):
    ours = entity_scores(gold, pred, scheme, strict=strict)
    report, micro, macro = seqeval_scores(gold, pred, scheme, strict)
    context = (gold, pred, scheme, strict, ours, report)
    for key, value in zip(("precision", "recall", "f1"), micro):
        assert same(ours[key], value), context
        assert same(ours[key], report["micro avg"]["f1-score" if key == "f1" else key]), context
    for key, value in zip(("macro_precision", "macro_recall", "macro_f1"), macro):
        assert same(ours[key], value), context
    assert ours["support"] == report["micro avg"]["support"], context
    labels = {k for k in report if not k.endswith(" avg")}
    assert set(ours["per_label"]) == labels, context
    for label, row in ours["per_label"].items():
        theirs = report[label]
        assert same(row["precision"], theirs["precision"]), context
        assert same(row["recall"], theirs["recall"]), context
        assert same(row["f1"], theirs["f1-score"]), context
        assert row["support"] == theirs["support"], context
    return ours


# --- schemes -------------------------------------------------------------------------------

def test_tag_names():
    assert tag_names(["PER", "LOC", "PER"]) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert tag_names(["PER", "LOC"], "BIOES") == [
        "O", "B-LOC", "I-LOC", "E-LOC", "S-LOC", "B-PER", "I-PER", "E-PER", "S-PER"]
    assert tag_names(["PER", "LOC"], "IO") == ["O", "I-LOC", "I-PER"]
    assert tag_names([], "bioes") == ["O"]
    with pytest.raises(TagtuneError, match="scheme"):
        tag_names(["PER"], "BILOU")


def test_tags_for_entities_literal():
    entities = [(0, 1, "PER"), (3, 6, "LOC"), (6, 8, "LOC")]
    assert tags_for_entities(8, entities, "BIO") == [
        "B-PER", "O", "O", "B-LOC", "I-LOC", "I-LOC", "B-LOC", "I-LOC"]
    assert tags_for_entities(8, entities, "BIOES") == [
        "S-PER", "O", "O", "B-LOC", "I-LOC", "E-LOC", "B-LOC", "E-LOC"]
    assert tags_for_entities(8, entities, "IO") == [
        "I-PER", "O", "O", "I-LOC", "I-LOC", "I-LOC", "I-LOC", "I-LOC"]
    assert tags_for_entities(0, [], "BIO") == []
    with pytest.raises(ValueError, match="overlaps"):
        tags_for_entities(5, [(0, 3, "A"), (2, 4, "B")])
    with pytest.raises(ValueError):
        tags_for_entities(3, [(1, 4, "A")])
    with pytest.raises(ValueError):
        tags_for_entities(3, [(1, 1, "A")])


def random_entities(rng, length, scheme):
    """Non-overlapping entities; under IO never two adjacent ones of one type."""
    entities, i = [], 0
    while i < length:
        if rng.random() < 0.4:
            end = min(length, i + rng.randint(1, 4))
            kind = rng.choice(TYPES)
            if scheme == "IO" and entities and entities[-1][1] == i and entities[-1][2] == kind:
                kind = next(t for t in TYPES if t != kind)
            entities.append((i, end, kind))
            i = end
        else:
            i += rng.randint(1, 3)
    return entities


@pytest.mark.parametrize("scheme", SCHEMES)
def test_round_trip(scheme):
    rng = random.Random(1)
    for _ in range(300):
        length = rng.randint(0, 15)
        entities = random_entities(rng, length, scheme)
        tags = tags_for_entities(length, entities, scheme)
        assert entities_from_tags(tags, scheme) == entities
        assert entities_from_tags(tags, scheme, strict=True) == entities


def test_entities_from_tags_literal():
    tags = ["I-PER", "I-PER", "O", "B-LOC", "I-PER", "B-LOC", "B-LOC", "I-LOC"]
    # conlleval: a leading I- opens an entity, a type switch splits one
    assert entities_from_tags(tags) == [(0, 2, "PER"), (3, 4, "LOC"), (4, 5, "PER"), (5, 6, "LOC"), (6, 8, "LOC")]
    # strict IOB2: stray I- are ignored
    assert entities_from_tags(tags, "BIO", strict=True) == [(3, 4, "LOC"), (5, 6, "LOC"), (6, 8, "LOC")]
    bioes = ["B-PER", "I-PER", "O", "B-LOC", "E-LOC", "S-PER", "E-PER", "I-LOC", "B-PER"]
    assert entities_from_tags(bioes, "BIOES") == [
        (0, 2, "PER"), (3, 5, "LOC"), (5, 6, "PER"), (6, 7, "PER"), (7, 8, "LOC"), (8, 9, "PER")]
    assert entities_from_tags(bioes, "BIOES", strict=True) == [(3, 5, "LOC"), (5, 6, "PER")]
    io = ["I-A", "I-A", "I-B", "O", "I-A"]
    assert entities_from_tags(io, "IO") == entities_from_tags(io, "IO", strict=True) == [
        (0, 2, "A"), (2, 3, "B"), (4, 5, "A")]
    for tags, scheme, strict in ([tags, "BIO", False], [tags, "BIO", True], [bioes, "BIOES", False],
                                 [bioes, "BIOES", True], [io, "IO", True]):
        assert entities_from_tags(tags, scheme, strict) == seqeval_entities(tags, scheme, strict)


def test_bad_tags():
    with pytest.raises(TagtuneError, match="not a BIO tag"):
        entities_from_tags(["S-PER"], "BIO", strict=True)
    with pytest.raises(TagtuneError, match="not a IO tag"):
        entities_from_tags(["B-PER"], "IO", strict=True)
    assert entities_from_tags(["S-PER"], "BIO") == [(0, 1, "PER")]  # default mode: any prefix
    for bad in ("PER", "B-", "X-PER", "B_PER", ""):
        with pytest.raises(TagtuneError, match="neither"):
            entities_from_tags(["O", bad])


def test_transition_mask_literal():
    labels = ["O", "B-A", "I-A", "B-B", "I-B"]
    start, trans, end = transition_mask(labels, "BIO")
    assert start.tolist() == [True, True, False, True, False]
    assert end.all()
    follows = {(labels[i], labels[j]) for i in range(5) for j in range(5) if trans[i, j]}
    forbidden = {(a, b) for a in labels for b in labels} - follows
    assert forbidden == {(a, b) for a in ("O", "B-B", "I-B") for b in ("I-A",)} | {
        (a, b) for a in ("O", "B-A", "I-A") for b in ("I-B",)}

    labels = ["O", "B-A", "I-A", "E-A", "S-A", "B-B", "I-B", "E-B", "S-B"]
    start, trans, end = transition_mask(labels, "BIOES")
    starts = {label for label, ok in zip(labels, start) if ok}
    ends = {label for label, ok in zip(labels, end) if ok}
    assert starts == {"O", "B-A", "S-A", "B-B", "S-B"}
    assert ends == {"O", "E-A", "S-A", "E-B", "S-B"}
    after = {a: {labels[j] for j in range(9) if trans[i, j]} for i, a in enumerate(labels)}
    closed = {"O", "B-A", "S-A", "B-B", "S-B"}
    assert after["O"] == after["E-A"] == after["S-B"] == closed
    assert after["B-A"] == after["I-A"] == {"I-A", "E-A"}
    assert after["I-B"] == {"I-B", "E-B"}

    start, trans, end = transition_mask(["O", "I-A", "I-B"], "IO")
    assert start.all() and trans.all() and end.all()
    with pytest.raises(TagtuneError):
        transition_mask(["O", "B-A", "E-A"], "BIO")


# --- metrics: literal cases -----------------------------------------------------------------

def test_entity_scores_seqeval_doc_example():
    gold = [["O", "O", "B-MISC", "I-MISC", "B-MISC", "O", "O"], ["B-PER", "I-PER", "O"]]
    pred = [["O", "O", "B-MISC", "I-MISC", "B-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    ours = assert_matches_seqeval(gold, pred, "BIO", strict=False)
    assert ours["f1"] == pytest.approx(2 / 3)
    assert ours["macro_f1"] == pytest.approx(0.75)
    assert ours["per_label"]["MISC"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert ours["support"] == 3


def test_entity_scores_default_vs_strict():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG"]]
    pred = [["I-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-LOC"]]
    lenient = assert_matches_seqeval(gold, pred, "BIO", strict=False)
    strict = assert_matches_seqeval(gold, pred, "BIO", strict=True)
    # default: PER found (leading I- opens it), ORG split into ORG + LOC; strict: no PER
    assert lenient["per_label"]["PER"]["f1"] == 1.0
    assert strict["per_label"]["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert lenient["precision"] == pytest.approx(2 / 4) and lenient["recall"] == pytest.approx(2 / 3)
    assert strict["precision"] == pytest.approx(1 / 2) and strict["recall"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("strict", [False, True])
def test_entity_scores_zero_division(strict):
    # no predictions at all; a predicted label with no gold; nothing anywhere
    cases = [
        ([["B-A", "I-A", "O"]], [["O", "O", "O"]]),
        ([["B-A", "O", "O"]], [["B-A", "O", "B-B"]]),
        ([["O", "O"]], [["B-A", "O"]]),
        ([["O", "O"], []], [["O", "O"], []]),
    ]
    for gold, pred in cases:
        assert_matches_seqeval(gold, pred, "BIO", strict)
    nothing = entity_scores([["O"]], [["O"]], strict=strict)
    assert nothing == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "macro_precision": 0.0,
                       "macro_recall": 0.0, "macro_f1": 0.0, "support": 0, "per_label": {}}
    only_pred = entity_scores([["O", "O"]], [["B-A", "O"]], strict=strict)
    assert only_pred["per_label"]["A"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_entity_scores_bioes_and_io_literal():
    gold = [["S-PER", "O", "B-LOC", "I-LOC", "E-LOC"], ["B-ORG", "E-ORG", "S-ORG"]]
    pred = [["S-PER", "O", "B-LOC", "I-LOC", "I-LOC"], ["B-ORG", "E-ORG", "B-ORG"]]
    for strict in (False, True):
        assert_matches_seqeval(gold, pred, "BIOES", strict)
    assert entity_scores(gold, pred, "BIOES", strict=True)["per_label"]["LOC"]["precision"] == 0.0
    gold = [["I-A", "I-A", "O", "I-B", "I-B", "I-A"]]
    pred = [["I-A", "I-B", "O", "I-B", "I-B", "I-B"]]
    for strict in (False, True):
        assert_matches_seqeval(gold, pred, "IO", strict)


def test_entity_scores_length_mismatch():
    with pytest.raises(ValueError):
        entity_scores([["O"]], [["O"], ["O"]])
    with pytest.raises(ValueError):
        entity_scores([["O", "O"]], [["O"]])


# --- metrics: random cases -------------------------------------------------------------------

def corrupt(rng, tags, scheme, strict):
    """Random damage: invalid I- after O, type switches, dropped / moved boundaries and, in
    default mode, tags of other schemes."""
    tags = list(tags)
    prefixes = {"BIO": "BI", "BIOES": "BIES", "IO": "I"}[scheme]
    if not strict:
        prefixes = "BIES"
    for _ in range(rng.randint(0, 4)):
        if not tags:
            break
        i = rng.randrange(len(tags))
        move = rng.random()
        if move < 0.3:
            tags[i] = "O"
        elif move < 0.6 and tags[i] != "O":
            tags[i] = tags[i][:2] + rng.choice(TYPES)  # type switch
        else:
            tags[i] = rng.choice(prefixes) + "-" + rng.choice(TYPES)  # includes I- after O
    return tags


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_entity_scores_random_match_seqeval(scheme, strict):
    rng = random.Random(10 * SCHEMES.index(scheme) + strict)
    for _ in range(60):
        gold, pred = [], []
        for _ in range(rng.randint(1, 5)):
            length = rng.randint(0, 12)
            tags = tags_for_entities(length, random_entities(rng, length, scheme), scheme)
            gold.append(corrupt(rng, tags, scheme, strict) if rng.random() < 0.3 else tags)
            pred.append(corrupt(rng, tags, scheme, strict))
        assert_matches_seqeval(gold, pred, scheme, strict)
        for tags in gold + pred:
            assert entities_from_tags(tags, scheme, strict) == seqeval_entities(tags, scheme, strict), tags


# --- span scores -------------------------------------------------------------------------------

def test_span_scores_literal():
    gold = [[Span(0, 5, "PER"), Span(10, 16, "LOC")], [(3, 7, "ORG")], []]
    pred = [[Span(0, 5, "PER", 0.9), Span(10, 15, "LOC")], [Span(3, 7, "ORG"), (8, 9, "PER")], [(0, 1, "LOC")]]
    s = span_scores(gold, pred)
    assert s["precision"] == pytest.approx(2 / 5)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 * (2 / 5) * (2 / 3) / (2 / 5 + 2 / 3))
    assert s["support"] == 3
    assert s["per_label"] == {
        "LOC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
        "ORG": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
        "PER": {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1},
    }
    assert s["macro_f1"] == pytest.approx((0 + 1 + 2 / 3) / 3)
    # the same span in another text is another entity; a score does not matter
    assert span_scores([[(0, 1, "A")], []], [[], [(0, 1, "A")]])["f1"] == 0.0
    assert span_scores([[(0, 1, "A")]], [[Span(0, 1, "A", 0.2)]])["f1"] == 1.0
    with pytest.raises(ValueError):
        span_scores([[]], [])


def test_span_scores_equal_entity_scores_over_positions():
    rng = random.Random(7)
    gold, pred = [], []
    for _ in range(20):
        length = rng.randint(0, 10)
        gold.append(tags_for_entities(length, random_entities(rng, length, "BIO"), "BIO"))
        pred.append(corrupt(rng, gold[-1], "BIO", strict=False))
    spans = [[Span(s, e, t) for s, e, t in entities_from_tags(tags)] for tags in gold]
    spans_pred = [[(s, e, t) for s, e, t in entities_from_tags(tags)] for tags in pred]
    assert span_scores(spans, spans_pred) == entity_scores(gold, pred)
