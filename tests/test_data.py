"""Readers for annotation files: exact texts and spans, format detection, error messages."""

import json
import warnings

import pytest

from tagtune import TagtuneError
from tagtune.data.formats import (
    FORMATS,
    KeywordWarning,
    LabelStudioWarning,
    keyword_spans,
    read_examples,
    split_dev,
    write_jsonl,
)
from tagtune.apps.examples import wnut_path
from tagtune import Example, Span


def write(tmp_path, name, content, encoding="utf-8"):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_bytes(content.encode(encoding))
    return path


def jsonl(*records):
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def pairs(examples):
    """(text, [(start, end, label)]) of each example."""
    return [(e.text, [(s.start, s.end, s.label) for s in e.spans]) for e in examples]


def error(path, *args, **kwargs):
    with pytest.raises(TagtuneError) as info:
        read_examples(path, *args, **kwargs)
    return str(info.value)


def assert_error(path, line, *fragments, **kwargs):
    """Reading ``path`` fails with a message naming the file, the line and each fragment."""
    message = error(path, **kwargs)
    prefix = f"{path}:{line}:" if line is not None else f"{path}:"
    assert message.startswith(prefix), message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --------------------------------------------------------------------------- CoNLL


def test_conll_bio_with_columns_docstart_and_blank_lines(tmp_path):
    path = write(tmp_path, "a.conll", (
        "-DOCSTART- -X- -X- O\n"
        "\n"
        "EU NNP B-NP B-ORG\n"
        "rejects VBZ B-VP O\n"
        "German JJ B-NP B-MISC\n"
        "call NN I-NP O\n"
        "\n"
        " \t \n"  # only whitespace: a blank line
        "Peter\tNNP\tB-PER\n"
        "Blackburn\tNNP\tI-PER\n"
        "\n\n"
    ))
    examples = read_examples(path)
    assert pairs(examples) == [
        ("EU rejects German call", [(0, 2, "ORG"), (11, 17, "MISC")]),
        ("Peter Blackburn", [(0, 15, "PER")]),
    ]
    assert [e.source for e in examples] == [f"{path}:3", f"{path}:9"]


def test_conll_crlf_and_spaces_and_last_sentence_without_blank_line(tmp_path):
    path = write(tmp_path, "b.bio", "New  B-LOC\r\nYork   I-LOC\r\nis O\r\n\r\nhi O\r\nthere O")
    assert pairs(read_examples(path)) == [("New York is", [(0, 8, "LOC")]), ("hi there", [])]


def test_conll_tab_split_keeps_other_whitespace_in_tokens(tmp_path):
    path = write(tmp_path, "c.conll", "東京\u3000都\tB-LOC\nへ\tO\n")
    assert pairs(read_examples(path)) == [("東京\u3000都 へ", [(0, 4, "LOC")])]


@pytest.mark.parametrize("tags, expected", [
    # BIO / IOB2
    ("B-A I-A O B-B", [(0, 3, "A"), (6, 7, "B")]),
    ("B-A B-A I-A", [(0, 1, "A"), (2, 5, "A")]),
    # conlleval: an I- after O or after another type starts an entity (IOB1)
    ("I-A I-A O I-A", [(0, 3, "A"), (6, 7, "A")]),
    ("I-A I-B B-B", [(0, 1, "A"), (2, 3, "B"), (4, 5, "B")]),
    ("B-A I-B I-B", [(0, 1, "A"), (2, 5, "B")]),
    # IO
    ("I-A I-A I-B O", [(0, 3, "A"), (4, 5, "B")]),
    # BIOES
    ("B-A I-A E-A S-A O S-B", [(0, 5, "A"), (6, 7, "A"), (10, 11, "B")]),
    ("B-A E-A I-A E-A", [(0, 3, "A"), (4, 7, "A")]),
    ("S-A I-A", [(0, 1, "A"), (2, 3, "A")]),
    ("B-A", [(0, 1, "A")]),
    # BILOU
    ("B-A L-A U-A U-A", [(0, 3, "A"), (4, 5, "A"), (6, 7, "A")]),
    # hyphenated types
    ("B-geo-loc I-geo-loc", [(0, 3, "geo-loc")]),
])
def test_conll_tag_schemes(tmp_path, tags, expected):
    tags = tags.split()
    letters = "abcdefgh"[: len(tags)]
    path = write(tmp_path, "t.conll", "".join(f"{c} {t}\n" for c, t in zip(letters, tags)))
    [example] = read_examples(path)
    assert example.text == " ".join(letters)
    assert pairs([example])[0][1] == expected


def test_conll_token_without_tag(tmp_path):
    path = write(tmp_path, "d.conll", "a O\n\nb O\nlonely\n")
    assert_error(path, 4, "'lonely'", "no tag")


def test_conll_token_with_empty_tab_column(tmp_path):
    path = write(tmp_path, "d.conll", "a\tO\nb\t\n")
    assert_error(path, 2, "'b'", "no tag")


@pytest.mark.parametrize("tag", ["X-PER", "B-", "b-PER", "PER", "0"])
def test_conll_unknown_tag(tmp_path, tag):
    path = write(tmp_path, "e.conll", f"a O\nb {tag}\n")
    assert_error(path, 2, f"unknown tag {tag!r}")


def test_conll_unknown_label(tmp_path):
    path = write(tmp_path, "e.conll", "a B-PER\n\nb B-ORGG\n")
    assert_error(path, 3, "unknown label 'ORGG'", "ORG, PER", labels={"PER", "ORG"})
    assert len(read_examples(path, labels={"PER", "ORGG"})) == 2


def test_conll_only_docstart(tmp_path):
    path = write(tmp_path, "f.conll", "-DOCSTART- O\n\n")
    assert_error(path, None, "no examples")


# --------------------------------------------------------------------------- JSONL spans


def test_jsonl_spans_japanese(tmp_path):
    path = write(tmp_path, "ja.jsonl", jsonl(
        {"text": "東京タワーは港区にある。", "spans": [
            {"start": 6, "end": 8, "label": "地名"},
            {"start": 0, "end": 5, "label": "施設", "text": "東京タワー"},
        ]},
        {"text": "何もない", "spans": []},
    ) + "\n  \n")
    examples = read_examples(path)
    assert pairs(examples) == [
        ("東京タワーは港区にある。", [(0, 5, "施設"), (6, 8, "地名")]),
        ("何もない", []),
    ]
    assert [e.source for e in examples] == [f"{path}:1", f"{path}:2"]
    assert examples[0].text[0:5] == "東京タワー"


def test_jsonl_entities_and_triples_and_duplicates(tmp_path):
    path = write(tmp_path, "e.jsonl", jsonl(
        {"text": "Ann met Bob", "entities": [[8, 11, "PER"], {"start": 0, "end": 3, "label": "PER"},
                                             [8, 11, "PER"]]},
    ))
    assert pairs(read_examples(path, format="jsonl")) == [("Ann met Bob", [(0, 3, "PER"), (8, 11, "PER")])]


def test_jsonl_bom_and_crlf(tmp_path):
    content = "\ufeff" + jsonl({"text": "Paris", "spans": [{"start": 0, "end": 5, "label": "LOC"}]})
    path = write(tmp_path, "bom.jsonl", content.replace("\n", "\r\n"))
    assert pairs(read_examples(path)) == [("Paris", [(0, 5, "LOC")])]


def test_jsonl_line_separator_inside_text_is_not_a_line_break(tmp_path):
    path = write(tmp_path, "ls.jsonl", jsonl(
        {"text": "a\u2028b\x85c", "spans": [{"start": 4, "end": 5, "label": "X"}]},
        {"text": "d", "spans": []},
    ))
    examples = read_examples(path)
    assert pairs(examples) == [("a\u2028b\x85c", [(4, 5, "X")]), ("d", [])]
    assert examples[1].source == f"{path}:2"


def test_jsonl_as_a_json_list(tmp_path):
    records = [{"text": "x y", "spans": [{"start": 2, "end": 3, "label": "L"}]}, {"text": "z", "spans": []}]
    path = write(tmp_path, "list.json", json.dumps(records, indent=2))
    examples = read_examples(path)
    assert pairs(examples) == [("x y", [(2, 3, "L")]), ("z", [])]
    assert [e.source for e in examples] == [f"{path}:2", f"{path}:12"]


def test_jsonl_last_record_of_an_id_wins_and_skipped_texts_are_no_examples(tmp_path):
    path = write(tmp_path, "answers.jsonl", jsonl(
        {"id": 1, "text": "Ann met Bob", "skipped": True},
        {"id": 2, "text": "Acme hired Ann", "spans": [[0, 4, "ORG"]]},
        {"id": 1, "text": "Ann met Bob", "spans": [[0, 3, "PER"]]},
        {"id": 3, "text": "nothing here", "spans": []},
        {"id": 2, "text": "Acme hired Ann", "spans": [[0, 4, "ORG"], [11, 14, "PER"]]},
        {"id": 4, "text": "skip me", "spans": [[0, 4, "X"]]},
        {"id": 4, "text": "skip me", "skipped": True},
    ))
    examples = read_examples(path)  # detected as jsonl past the first record, a skip
    assert pairs(examples) == [("Ann met Bob", [(0, 3, "PER")]), ("nothing here", []),
                               ("Acme hired Ann", [(0, 4, "ORG"), (11, 14, "PER")])]
    assert [e.source for e in examples] == [f"{path}:3", f"{path}:4", f"{path}:5"]
    # records without an id are each an example, a repeated text included
    plain = read_examples(write(tmp_path, "plain.jsonl", jsonl(
        {"text": "Ann met Bob", "spans": [[0, 3, "PER"]]}, {"text": "Ann met Bob", "spans": [[8, 11, "PER"]]},
        {"id": 5, "text": "Ann met Bob", "spans": []})))
    assert pairs(plain) == [("Ann met Bob", [(0, 3, "PER")]), ("Ann met Bob", [(8, 11, "PER")]), ("Ann met Bob", [])]
    assert_error(write(tmp_path, "skipped.jsonl", jsonl({"text": "a", "skipped": True})), None,
                 "every text in the file is marked skipped")
    bad = write(tmp_path, "bad.jsonl", jsonl({"text": "a", "spans": []}, {"text": "b", "skipped": "yes"}))
    assert_error(bad, 2, '"skipped" is the string \'yes\', not true or false')
    assert_error(write(tmp_path, "no-text.jsonl", jsonl({"text": "a", "spans": []}, {"skipped": True})), 2,
                 'no "text"')


def test_write_jsonl_round_trip(tmp_path):
    examples = [
        Example("東京タワーは港区", [Span(0, 5, "施設"), Span(6, 8, "地名", score=0.5)]),
        Example("nothing", []),
    ]
    path = tmp_path / "out" / "w.jsonl"
    write_jsonl(examples, path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0]) == {"text": "東京タワーは港区", "spans": [
        {"start": 0, "end": 5, "label": "施設", "text": "東京タワー"},
        {"start": 6, "end": 8, "label": "地名", "text": "港区", "score": 0.5},
    ]}
    assert "東京" in lines[0]  # not \u-escaped
    assert pairs(read_examples(path)) == pairs(examples)


# --------------------------------------------------------------------------- doccano


def test_doccano_label_triples(tmp_path):
    path = write(tmp_path, "admin.jsonl", jsonl(
        {"id": 7, "text": "大阪で会った。", "label": [[0, 2, "LOC"]], "Comments": []},
        {"id": 8, "text": "EU rejects", "label": []},
    ))
    assert pairs(read_examples(path)) == [("大阪で会った。", [(0, 2, "LOC")]), ("EU rejects", [])]


def test_doccano_variants(tmp_path):
    path = write(tmp_path, "v.jsonl", jsonl(
        {"id": 1, "text": "Ann in Rome", "entities": [
            {"id": 5, "label": "LOC", "start_offset": 7, "end_offset": 11},
            {"id": 4, "label": "PER", "start_offset": 0, "end_offset": 3}], "relations": []},
        {"id": 2, "data": "Bob", "labels": [[0, 3, "PER"]]},
    ))
    assert pairs(read_examples(path, format="doccano")) == [
        ("Ann in Rome", [(0, 3, "PER"), (7, 11, "LOC")]),
        ("Bob", [(0, 3, "PER")]),
    ]


def test_doccano_text_classification_export(tmp_path):
    path = write(tmp_path, "cls.jsonl", jsonl({"text": "good", "label": ["positive"]}))
    assert_error(path, 1, "label[0]", "'positive'", "classification")


# --------------------------------------------------------------------------- keywords


def test_keywords_japanese(tmp_path):
    path = write(tmp_path, "kw.jsonl", jsonl(
        {"text": "東京都の東京駅と京都", "keywords": ["東京", "京都"]},
    ))
    # 東京 at 0 and 4; 京都 at 1 overlaps 東京 (same length, later) and loses; 京都 at 8 is free.
    assert pairs(read_examples(path)) == [("東京都の東京駅と京都", [(0, 2, "KEY"), (4, 6, "KEY"), (8, 10, "KEY")])]


def test_keywords_longer_wins_then_earlier(tmp_path):
    path = write(tmp_path, "kw.jsonl", jsonl(
        {"text": "New York City and York", "keywords": ["York", "New York City", "York City"]},
        {"text": "ははは", "keywords": ["はは"]},  # overlapping occurrences of one keyword
    ))
    assert pairs(read_examples(path, keyword_label="CITY")) == [
        ("New York City and York", [(0, 13, "CITY"), (18, 22, "CITY")]),
        ("ははは", [(0, 2, "CITY")]),
    ]


def test_keywords_match_whole_words_in_spaced_scripts():
    text = "Art starts: art, 2023 and 3 arts; Zürich Zürichsee"
    spans, missing = keyword_spans(text, ["art", "3", "Zürich", "Ar"], "K")
    assert [(text[s.start:s.end], s.start) for s in spans] == [("art", 12), ("3", 26), ("Zürich", 34)]
    assert missing == ["Ar"]  # case-sensitive, and only inside "Art"


def test_keywords_missing_are_counted_in_one_warning(tmp_path):
    path = write(tmp_path, "kw.jsonl", jsonl(
        {"text": "Tokyo", "keywords": ["Tokyo", "Kyoto"]},
        {"text": "大阪", "keywords": ["名古屋"]},
        {"text": "none", "keywords": []},
    ))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        examples = read_examples(path)
    assert pairs(examples) == [("Tokyo", [(0, 5, "KEY")]), ("大阪", []), ("none", [])]
    assert len(caught) == 1 and issubclass(caught[0].category, KeywordWarning)
    message = str(caught[0].message)
    assert str(path) in message and "2 keyword(s)" in message and f"{path}:1: 'Kyoto'" in message
    assert caught[0].filename == __file__


@pytest.mark.parametrize("record, fragment", [
    ({"text": "a"}, 'no "keywords"'),
    ({"text": "a", "keywords": "a"}, '"keywords" is the string'),
    ({"text": "a", "keywords": ["a", 3]}, "keywords[1] is the number 3"),
    ({"text": "a", "keywords": ["a", " "]}, "keywords[1] is empty"),
    ({"keywords": ["a"]}, 'no "text"'),
])
def test_keywords_errors(tmp_path, record, fragment):
    path = write(tmp_path, "kw.jsonl", jsonl({"text": "ok", "keywords": ["ok"]}, record))
    assert_error(path, 2, fragment, format="keywords")


# --------------------------------------------------------------------------- Label Studio


def ls_result(start, end, label, text=None, kind="labels"):
    value = {"start": start, "end": end, "labels": [label]}
    if text is not None:
        value["text"] = text
    return {"id": "r", "from_name": "label", "to_name": "text", "type": kind, "value": value}


LS_TASKS = [
    {"id": 1, "data": {"text": "Barack Obama visited Paris."},
     "annotations": [
         {"id": 10, "was_cancelled": True, "result": [ls_result(0, 6, "PER")]},
         {"id": 11, "was_cancelled": False, "result": [
             ls_result(21, 26, "LOC", "Paris"), ls_result(0, 12, "PER", "Barack Obama"),
             {"type": "choices", "value": {"choices": ["news"]}},
             {"type": "relation", "from_id": "a", "to_id": "b"},
         ]},
     ],
     "predictions": [{"result": [ls_result(0, 6, "ORG")]}]},
    {"id": 2, "data": {"text": "only predicted"}, "annotations": [],
     "predictions": [{"result": [ls_result(0, 4, "X")]}]},
    {"id": 3, "data": {"text": "all cancelled"},
     "annotations": [{"was_cancelled": True, "result": [ls_result(0, 3, "X")]}]},
    {"id": 4, "data": {"meta": 5, "sentence": "京都に行く", "other": "x"},
     "annotations": [{"result": [ls_result(0, 2, "LOC")]}]},
    {"id": 5, "data": {"text": "😀 Rome"},  # UTF-16 offsets (older Label Studio) and code points
     "annotations": [{"result": [ls_result(3, 7, "LOC", "Rome")]}]},
    {"id": 6, "data": {"text": "😀 Rome"},
     "annotations": [{"result": [ls_result(2, 6, "LOC", "Rome")]}]},
    {"id": 7, "data": {"text": "no entities"}, "annotations": [{"result": []}]},
]


def test_label_studio(tmp_path):
    path = write(tmp_path, "export.json", json.dumps(LS_TASKS, indent=1, ensure_ascii=False))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        examples = read_examples(path)
    assert [(w.category, str(w.message), w.filename) for w in caught] == [(
        LabelStudioWarning,
        f"{path}: 2 of the 7 tasks left out, without an annotation (1 with only cancelled annotations, "
        "1 not annotated (1 of them with predictions, which are not read))",
        __file__,
    )]
    assert pairs(examples) == [
        ("Barack Obama visited Paris.", [(0, 12, "PER"), (21, 26, "LOC")]),
        ("京都に行く", [(0, 2, "LOC")]),
        ("😀 Rome", [(2, 6, "LOC")]),
        ("😀 Rome", [(2, 6, "LOC")]),
        ("no entities", []),
    ]
    lines = path.read_text(encoding="utf-8").split("\n")
    for example in examples:
        line = int(example.source.rsplit(":", 1)[1])
        assert lines[line - 1] == " {", example.source
        assert json.dumps(example.text, ensure_ascii=False) in "".join(lines[line:line + 8])


def test_label_studio_compact_export(tmp_path):
    path = write(tmp_path, "export.json", json.dumps(LS_TASKS[:1]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every task annotated: nothing to say
        [example] = read_examples(path, format="label-studio")
    assert example.source == f"{path}:1"


def test_label_studio_tasks_left_out_are_one_warning_line(cli, tmp_path):
    """Unannotated and cancelled tasks beside annotated ones: a command reading the export says on
    stderr how many it leaves out and why, and goes on."""
    path = write(tmp_path, "export.json", json.dumps([LS_TASKS[0], *LS_TASKS[1:3] * 2, LS_TASKS[6]]))
    gold = write(tmp_path, "gold.jsonl", jsonl(*({"text": LS_TASKS[i]["data"]["text"], "spans": []} for i in (0, 6))))
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        result = cli("score", gold, path)
    assert result.returncode == 0, result.stderr
    warned = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warned == [f"tagtune: warning: {path}: 4 of the 6 tasks left out, without an annotation (2 with only "
                      "cancelled annotations, 2 not annotated (2 of them with predictions, which are not read))"]


# Label Studio's JSON-MIN export (1.23): a record per submitted annotation, the task's data beside
# the spans of each <Labels> tag under its name; an annotation without spans has no such field.
LS_MIN = [
    {"text": "Barack Obama visited Paris.", "id": 1,
     "label": [{"start": 0, "end": 12, "text": "Barack Obama", "labels": ["PER"]},
               {"start": 21, "end": 26, "text": "Paris", "labels": ["LOC"]}],
     "annotator": 1, "annotation_id": 11, "created_at": "2025-06-02T09:14:03.512345Z",
     "updated_at": "2025-06-02T09:14:03.512360Z", "lead_time": 12.408},
    {"text": "the sofa is red", "id": 2, "annotator": 1, "annotation_id": 12,
     "created_at": "2025-06-02T09:14:09.100201Z", "updated_at": "2025-06-02T09:14:09.100215Z", "lead_time": 3.1},
]


@pytest.mark.parametrize("order", [1, -1])  # the record without spans last, then first (detection)
def test_label_studio_json_min_annotation_without_spans(tmp_path, order):
    path = write(tmp_path, "export.json", json.dumps(LS_MIN[::order], indent=2))
    expected = [("Barack Obama visited Paris.", [(0, 12, "PER"), (21, 26, "LOC")]), ("the sofa is red", [])]
    assert pairs(read_examples(path)) == expected[::order]
    assert pairs(read_examples(path, format="doccano")) == expected[::order]


@pytest.mark.parametrize("change, fragment", [
    (lambda r: r.pop("annotation_id"), "the record has no spans"),  # not recognisably an annotation
    (lambda r: r.update(annotation_id=None), 'the Label Studio task has no annotation ("annotation_id" is null); '
                                             "export only the annotated tasks"),
    (lambda r: r.update(ner=LS_MIN[0]["label"]), 'the spans are under "ner", not "label"'),
])
def test_label_studio_json_min_errors(tmp_path, change, fragment):
    record = dict(LS_MIN[1])
    change(record)
    path = write(tmp_path, "export.jsonl", jsonl(LS_MIN[0], record))
    assert_error(path, 2, fragment, format="doccano")


def test_label_studio_nothing_annotated(tmp_path):
    path = write(tmp_path, "export.json", json.dumps(LS_TASKS[1:3]))
    assert_error(path, None, "no examples", "1 with only cancelled", "1 not annotated", "predictions")


def test_label_studio_bad_json_reports_the_decoders_line(tmp_path):
    path = write(tmp_path, "export.json", '[\n {"id": 1,\n  "data": {"text": "a"}\n  "annotations": []}\n]')
    assert_error(path, 4, "invalid JSON", "delimiter")


@pytest.mark.parametrize("change, fragment", [
    (lambda t: t.pop("data"), 'no "data"'),
    (lambda t: t["data"].update(text=5), '"data.text" is the number 5, not a string'),
    (lambda t: t["data"].update(text="Barry Obama visited"), "result[0] [0, 6) covers 'Barry ' in the text, but the span says its text is 'Barack'"),
    (lambda t: t["annotations"][0]["result"][0]["value"].update(start="0"), "result[0] start is the string '0', not an integer"),
    (lambda t: t["annotations"][0]["result"][0]["value"].update(labels=[]), "result[0] has no label"),
    (lambda t: t["annotations"][0]["result"][0]["value"].pop("end"), "result[0] has no end"),
    (lambda t: t["annotations"][0]["result"][1]["value"].update(start=4), "spans overlap: PER [0, 6) 'Barack' and LOC [4, 12) 'ck Obama'"),
])
def test_label_studio_errors(tmp_path, change, fragment):
    task = {"id": 9, "data": {"text": "Barack Obama visited Paris."},
            "annotations": [{"result": [ls_result(0, 6, "PER", "Barack"), ls_result(7, 12, "LOC")]}]}
    change(task)
    tasks = [{"id": 1, "data": {"text": "fine"}, "annotations": [{"result": []}]}, task]
    path = write(tmp_path, "export.json", json.dumps(tasks, indent=2))
    line = path.read_text().split("\n").index('    "id": 9,')  # the line of the task's "{"
    assert line == 13
    assert_error(path, line, "task 9", fragment)


# --------------------------------------------------------------------------- detection


@pytest.mark.parametrize("name, content, expected", [
    ("a.conll", "{ O\n", [("{", [])]),  # the extension decides
    ("a.txt", "Paris B-LOC\n", [("Paris", [(0, 5, "LOC")])]),
    ("a.tsv", "Paris\tNNP\tO\n", [("Paris", [])]),
    ("a", "[ B-X\n] O\n", [("[ ]", [(0, 1, "X")])]),
    ("a.txt", jsonl({"text": "ab", "spans": [{"start": 0, "end": 1, "label": "L"}]}), [("ab", [(0, 1, "L")])]),
    ("a.jsonl", jsonl({"text": "ab", "keywords": ["ab"]}), [("ab", [(0, 2, "KEY")])]),
    ("a.json", jsonl({"text": "ab", "label": [[1, 2, "L"]]}), [("ab", [(1, 2, "L")])]),
    ("a.ndjson", jsonl({"text": "ab", "entities": [[1, 2, "L"]]}), [("ab", [(1, 2, "L")])]),
    ("a.data", json.dumps([{"data": {"text": "ab"}, "annotations": [{"result": [ls_result(0, 1, "L")]}]}]),
     [("ab", [(0, 1, "L")])]),
])
def test_detection(tmp_path, name, content, expected):
    assert pairs(read_examples(write(tmp_path, name, content))) == expected


def test_unknown_format(tmp_path):
    path = write(tmp_path, "a.conll", "a O\n")
    message = assert_error(path, None, "unknown format 'brat'", format="brat")
    assert all(f in message for f in FORMATS)


def test_undetectable_format(tmp_path):
    path = write(tmp_path, "notes.txt", "just some prose\n")
    message = assert_error(path, None, "cannot tell the format")
    assert all(f in message for f in FORMATS)


def test_undetectable_json_record(tmp_path):
    path = write(tmp_path, "a.jsonl", "\n" + jsonl({"text": "a", "tags": ["O"]}))
    assert_error(path, 2, "cannot tell the format", "text, tags")


@pytest.mark.parametrize("name, content, fragment", [
    ("empty.jsonl", "", "the file is empty"),
    ("blank.conll", "\n \n\t\n", "the file is empty"),
    ("list.json", "[ ]", "no examples"),
    ("bom.jsonl", "\ufeff\n", "the file is empty"),
])
def test_empty_files(tmp_path, name, content, fragment):
    assert_error(write(tmp_path, name, content), None, fragment)


def test_not_utf8(tmp_path):
    path = write(tmp_path, "latin.conll", "a O\nCaf\xe9 B-LOC\n", encoding="latin-1")
    assert_error(path, 2, "not UTF-8", "0xe9")
    path = write(tmp_path, "wide.jsonl", "\ufeff" + jsonl({"text": "a", "spans": []}), encoding="utf-16-le")
    assert_error(path, None, "UTF-16")


def test_missing_file(tmp_path):
    assert_error(tmp_path / "nope.jsonl", None, "no such file")


# --------------------------------------------------------------------------- validation (span formats)


GOOD = {"text": "ok", "spans": []}


@pytest.mark.parametrize("line2, fragment", [
    ('{"text": "a", "spans": [}', "invalid JSON"),
    ('["text", "a"]', "expected a JSON object, got a list"),
    ('{"spans": []}', 'no "text"'),
    ('{"text": null, "spans": []}', '"text" is null, not a string'),
    ('{"text": ["a"], "spans": []}', '"text" is a list, not a string'),
    ('{"text": "abc"}', "no spans"),
    ('{"text": "abc", "spans": {"start": 0}}', '"spans" is an object, not a list'),
    ('{"text": "abc", "spans": [{"start": 0.0, "end": 1, "label": "X"}]}', "spans[0] start is the number 0.0, not an integer"),
    ('{"text": "abc", "spans": [{"start": 0, "end": "2", "label": "X"}]}', "spans[0] end is the string '2', not an integer"),
    ('{"text": "abc", "spans": [{"start": true, "end": 2, "label": "X"}]}', "spans[0] start is true, not an integer"),
    ('{"text": "abc", "spans": [{"end": 2, "label": "X"}]}', "spans[0] has no start"),
    ('{"text": "abc", "spans": [{"start": 2, "end": 2, "label": "X"}]}', "spans[0] start 2 is not before its end 2"),
    ('{"text": "abc", "spans": [{"start": 2, "end": 1, "label": "X"}]}', "spans[0] start 2 is not before its end 1"),
    ('{"text": "abc", "spans": [{"start": 1, "end": 4, "label": "X"}]}', "spans[0] end 4 is past the end of the text (3 characters)"),
    ('{"text": "abc", "spans": [{"start": -1, "end": 2, "label": "X"}]}', "spans[0] start -1 is negative"),
    ('{"text": "abc", "spans": [{"start": 0, "end": 2}]}', "spans[0] has no label"),
    ('{"text": "abc", "spans": [{"start": 0, "end": 2, "label": 3}]}', "spans[0] label is the number 3, not a string"),
    ('{"text": "abc", "spans": [{"start": 0, "end": 2, "label": " "}]}', "spans[0] label is empty"),
    ('{"text": "abc", "spans": [{"start": 0, "end": 2, "label": "X", "text": "bc"}]}', "covers 'ab' in the text, but the span says its text is 'bc'"),
    ('{"text": "abc", "spans": [[0, 2]]}', "spans[0] has 2 items, expected [start, end, label]"),
    ('{"text": "abc", "spans": [7]}', "spans[0] is the number 7, not a span"),
    ('{"text": "abcdef", "spans": [[0, 2, "X"], [3, 6, "Y"], [1, 3, "Z"]]}', "spans overlap: X [0, 2) 'ab' and Z [1, 3) 'bc'"),
    ('{"text": "abcdef", "spans": [[0, 6, "X"], [2, 3, "Y"]]}', "spans overlap: X [0, 6) 'abcdef' and Y [2, 3) 'c'"),
    ('{"text": "abcdef", "spans": [[0, 2, "X"], [0, 2, "Y"]]}', "spans overlap: X [0, 2) 'ab' and Y [0, 2) 'ab'"),
    ('{"text": "東京", "label": [[0, 3, "X"]]}', "label[0] end 3 is past the end of the text (2 characters)"),
])
def test_span_record_errors(tmp_path, line2, fragment):
    path = write(tmp_path, "bad.jsonl", json.dumps(GOOD) + "\n" + line2 + "\n" + json.dumps(GOOD) + "\n")
    assert_error(path, 2, fragment, format="jsonl")


def test_unknown_label(tmp_path):
    path = write(tmp_path, "l.jsonl", jsonl(GOOD, {"text": "abc", "spans": [[0, 1, "PER"], [2, 3, "PRE"]]}))
    assert_error(path, 2, "spans[1] has unknown label 'PRE' (expected one of: ORG, PER)", labels=["PER", "ORG"])
    assert_error(path, None, "keyword label 'KEY' is not one of the labels", format="keywords", labels=["PER"])


# --------------------------------------------------------------------------- split_dev


def test_split_dev_is_reproducible_and_disjoint():
    examples = [Example(str(i), []) for i in range(50)]
    train, dev = split_dev(examples, fraction=0.2, seed=3)
    assert len(dev) == 10 and len(train) == 40
    assert sorted(e.text for e in train + dev) == sorted(e.text for e in examples)
    assert [e.text for e in train] == sorted((e.text for e in train), key=int)  # original order kept
    assert split_dev(examples, fraction=0.2, seed=3) == (train, dev)
    assert split_dev(examples, fraction=0.2, seed=4)[1] != dev
    assert [len(part) for part in split_dev(examples[:3], fraction=0.01)] == [2, 1]
    assert [len(part) for part in split_dev(examples[:2], fraction=0.99)] == [1, 1]


@pytest.mark.parametrize("n, fraction, fragment", [(1, 0.5, "at least 2"), (5, 0, "between 0 and 1"),
                                                   (5, 1, "between 0 and 1"), (5, -0.1, "between 0 and 1")])
def test_split_dev_errors(n, fraction, fragment):
    with pytest.raises(TagtuneError, match=fragment):
        split_dev([Example("a", [])] * n, fraction=fraction)


# --------------------------------------------------------------------------- the real WNUT-2016 file


def test_wnut_file():
    path = wnut_path()
    examples = read_examples(path)
    assert len(examples) == 2394
    raw = path.read_text(encoding="utf-8").split("\n")
    entities = 0
    for example in examples:
        line = int(example.source.rsplit(":", 1)[1])
        rows = []
        while line - 1 < len(raw) and raw[line - 1].strip():
            rows.append(raw[line - 1].split("\t"))
            line += 1
        tokens = [token for token, _ in rows]
        assert example.text == " ".join(tokens)
        # Each span slices to the tokens from a B- tag through its I- tags, in the raw file.
        starts = [i for i, (_, tag) in enumerate(rows) if tag.startswith("B-")]
        assert len(example.spans) == len(starts)
        for span, first in zip(example.spans, starts):
            last = first
            while last + 1 < len(rows) and rows[last + 1][1] == "I-" + span.label:
                last += 1
            assert rows[first][1] == "B-" + span.label
            assert example.text[span.start:span.end] == " ".join(tokens[first:last + 1])
        entities += len(example.spans)
    assert entities == 1496
    first = examples[0]
    assert first.source == f"{path}:1"
    assert [(first.text[s.start:s.end], s.label) for s in first.spans] == [
        ("Empire State Building", "facility"), ("ESB", "facility")]
    assert raw[14:17] == ["Empire\tB-facility", "State\tI-facility", "Building\tI-facility"]


def test_tagtune_read_is_the_readers_of_train_and_evaluate(tmp_path):
    """The public reader: what training reads, overlapping spans kept only when asked, and a
    malformed record a TagtuneError naming its file and line."""
    import tagtune

    path = tmp_path / "nested.jsonl"
    path.write_text('{"text": "University of Tokyo", "spans": [{"start": 0, "end": 19, "label": "ORG"}, '
                    '{"start": 14, "end": 19, "label": "LOC"}]}\n{"text": "skip me", "skipped": true}\n',
                    encoding="utf-8")
    (example,) = tagtune.read(path, overlaps=True)
    assert example.text == "University of Tokyo"
    assert [(s.start, s.end, s.label) for s in example.spans] == [(0, 19, "ORG"), (14, 19, "LOC")]
    with pytest.raises(tagtune.TagtuneError, match=r"nested\.jsonl:1: spans overlap.*--head span"):
        tagtune.read(path)
