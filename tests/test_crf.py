"""The linear-chain CRF (--crf): its NLL, gradients, Viterbi path and marginals against brute-force
enumeration of every allowed path, and a tagger trained with it end to end."""

import itertools
import json

import numpy as np
import pytest
import torch

from tagtune.data.align import IGNORE
from tagtune.models.crf import ChainCRF, chain_nll, chains
from tagtune.data.decode import Transitions, decode_spans, forward_backward, span_probabilities, viterbi
from tagtune.data.schemes import entities_from_tags, tag_names, transition_mask

LABEL_SETS = [("BIO", ["A"]), ("BIOES", ["A"]), ("IO", ["A", "B"]), ("BIO", ["A", "B"])]


def path_scores(emissions, start, trans, end, opens=True, closes=True):
    """{path: score} for every path of one chain ``emissions: (n, L)`` that the float64 scores
    allow (-inf: forbidden); without ``opens`` / ``closes`` the first / last tag is free and unscored."""
    n, size = emissions.shape
    out = {}
    for path in itertools.product(range(size), repeat=n):
        score = sum(emissions[t, y] for t, y in enumerate(path))
        score += start[path[0]] if opens else 0.0
        score += end[path[-1]] if closes else 0.0
        score += sum(trans[a, b] for a, b in zip(path, path[1:]))
        if np.isfinite(score):
            out[path] = score
    return out


def log_sum(values):
    values = np.array(list(values))
    return values.max() + np.log(np.exp(values - values.max()).sum())


def random_scores(rng, labels, scheme):
    """Random learned scores, -inf where the scheme forbids the step (float64)."""
    n = len(labels)
    return Transitions(rng.normal(size=n), rng.normal(size=(n, n)), rng.normal(size=n)).masked(
        *transition_mask(labels, scheme))


def packed_chains(rng, n_labels, chain_lengths, scores, edges):
    """A packed batch whose sequences hold the given numbers of labelled positions among
    unlabelled ones (start and end tokens, later subwords), gold tags drawn from the allowed
    paths: (logits (T, L) float64, labels (T,), cu_seqlens, per sequence its chain's emissions
    (n, L) and gold path)."""
    logits, labels, sizes, per_chain = [], [], [], []
    for n, (opens, closes) in zip(chain_lengths, edges):
        emissions = rng.normal(size=(n, n_labels)) * 2.0
        paths = list(path_scores(emissions, *scores, opens, closes)) if n else [()]
        gold = paths[rng.integers(len(paths))]
        tokens = [IGNORE]
        for y in gold:
            tokens += [y] + [IGNORE] * int(rng.integers(0, 2))
        tokens.append(IGNORE)
        rows = rng.normal(size=(len(tokens), n_labels)) * 2.0
        rows[[t for t, y in enumerate(tokens) if y != IGNORE]] = emissions
        logits.append(rows)
        labels += tokens
        sizes.append(len(tokens))
        per_chain.append((emissions, gold))
    cu = torch.tensor(np.concatenate([[0], np.cumsum(sizes)]), dtype=torch.int32)
    return torch.tensor(np.concatenate(logits)), torch.tensor(labels), cu, per_chain


@pytest.mark.parametrize("scheme, types", LABEL_SETS)
def test_nll_equals_brute_force(scheme, types):
    """Sequences of different chain lengths (0 to 4) in one packed batch, windows that begin or
    end inside their text among them: -log p(gold) = log Z - score(gold) over the allowed paths."""
    labels = tag_names(types, scheme)
    rng = np.random.default_rng(len(labels))
    crf = ChainCRF(labels, scheme).double()
    scores = random_scores(rng, labels, scheme)
    crf.load_transitions(scores)
    lengths = [3, 1, 0, 4, 2, 3]
    edges = [(True, True), (True, True), (True, True), (False, True), (True, False), (False, False)]
    logits, tags, cu, per_chain = packed_chains(rng, len(labels), lengths, scores, edges)
    opens, closes = torch.tensor([e[0] for e in edges]), torch.tensor([e[1] for e in edges])
    got = crf.nll(logits, tags, cu, opens, closes)
    assert got.shape == (len(lengths),) and got.dtype == torch.float64
    for k, ((emissions, gold), (o, c)) in enumerate(zip(per_chain, edges)):
        if not gold:
            assert got[k].item() == 0.0
            continue
        paths = path_scores(emissions, *scores, o, c)
        assert got[k].item() == pytest.approx(log_sum(paths.values()) - paths[gold], abs=1e-9)


def test_chains_gather_the_labelled_positions_in_order():
    logits = torch.arange(8, dtype=torch.float32)[:, None].repeat(1, 2)  # token t scores t
    labels = torch.tensor([IGNORE, 1, IGNORE, 0, IGNORE, IGNORE, 1, IGNORE])
    emissions, tags, mask = chains(logits, labels, torch.tensor([0, 5, 5, 8], dtype=torch.int32))
    assert emissions[..., 0].tolist() == [[1.0, 3.0], [0.0, 0.0], [6.0, 0.0]]
    assert tags.tolist() == [[1, 0], [0, 0], [1, 0]] and mask.tolist() == [[True, True], [False, False],
                                                                           [True, False]]


@pytest.mark.parametrize("scheme, types", LABEL_SETS[:3])
def test_nll_gradients_match_finite_differences(scheme, types):
    """float64 gradients of the summed NLL w.r.t. the logits and the start, transition and end
    scores (the scheme's mask applied inside, as ChainCRF.scores applies it)."""
    labels = tag_names(types, scheme)
    rng = np.random.default_rng(7)
    scores = random_scores(rng, labels, scheme)
    edges = [(True, True), (False, True), (True, False)]
    logits, tags, cu, _ = packed_chains(rng, len(labels), [3, 2, 3], scores, edges)
    opens, closes = torch.tensor([e[0] for e in edges]), torch.tensor([e[1] for e in edges])
    crf = ChainCRF(labels, scheme)
    allowed = (crf.start_allowed, crf.trans_allowed, crf.end_allowed)
    params = [torch.tensor(np.where(np.isfinite(x), x, 0.0), requires_grad=True) for x in scores]

    def nll(lg, start, trans, end):
        masked = [torch.where(a, p, torch.tensor(-1e4, dtype=torch.float64)) for a, p in zip(allowed, (start, trans, end))]
        return chain_nll(lg, tags, cu, *masked, opens, closes).sum()

    assert torch.autograd.gradcheck(nll, (logits.clone().requires_grad_(), *params), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("scheme, types", LABEL_SETS)
def test_viterbi_and_marginals_with_transitions_equal_brute_force(scheme, types):
    """Decoding with a CRF's scores: the best path, log Z, the tag marginals and every span's
    probability, in a padded batch, against enumeration (emissions: the log-softmax of the logits)."""
    labels = tag_names(types, scheme)
    rng = np.random.default_rng(100 + len(labels))
    scores = random_scores(rng, labels, scheme)
    lengths = [4, 1, 3, 2]
    logits = rng.normal(size=(len(lengths), max(lengths), len(labels))) * 3.0
    mask = np.arange(max(lengths))[None, :] < np.array(lengths)[:, None]
    ids = viterbi(logits, mask, *scores)
    lattice = forward_backward(logits, mask, *scores)
    marginals = lattice.marginals()
    asked, want = [], []
    for row, n in enumerate(lengths):
        x = logits[row, :n].astype(np.float64)
        emissions = x - x.max(-1, keepdims=True)
        emissions = emissions - np.log(np.exp(emissions).sum(-1, keepdims=True))
        paths = path_scores(emissions, *scores)
        assert tuple(ids[row, :n]) == max(paths, key=paths.get)
        log_z = log_sum(paths.values())
        assert lattice.log_z[row] == pytest.approx(log_z, abs=1e-9)
        expected = np.zeros((n, len(labels)))
        spans: dict = {}
        for path, score in paths.items():
            p = np.exp(score - log_z)
            expected[np.arange(n), path] += p
            for entity in entities_from_tags([labels[y] for y in path], scheme):
                spans[entity] = spans.get(entity, 0.0) + p
        np.testing.assert_allclose(marginals[row, :n], expected, atol=1e-12)
        for (i, j, kind), p in spans.items():
            asked.append((row, i, j, kind))
            want.append(p)
    np.testing.assert_allclose(span_probabilities(lattice, labels, asked), want, atol=1e-12)


def test_zero_transitions_decode_as_the_scheme_alone():
    """A CRF whose scores are all 0 is the scheme-constrained lattice: same spans, same scores."""
    labels = tag_names(["A", "B"], "BIO")
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(6, len(labels))) * 3
    ranges = [(2 * i, 2 * i + 1) for i in range(6)]
    n = len(labels)
    zero = Transitions(np.zeros(n), np.zeros((n, n)), np.zeros(n))
    assert decode_spans(logits, labels, ranges, "BIO", transitions=zero) == decode_spans(logits, labels, ranges, "BIO")
    # a transition score that forbids B-A -> I-A in effect changes the path
    strong = Transitions(np.zeros(n), np.zeros((n, n)), np.zeros(n))
    strong.trans[labels.index("B-A"), labels.index("I-A")] = -50.0
    logits = np.full((2, n), -5.0)
    logits[0, labels.index("B-A")] = logits[1, labels.index("I-A")] = 5.0
    tags = [[labels[i] for i in row] for row in viterbi(logits[None], np.ones((1, 2), bool),
                                                         *strong.masked(*transition_mask(labels, "BIO")))]
    assert tags[0][0] == "B-A" and tags[0][1] != "I-A"


# ---------------------------------------------------------------------------------------------
# End to end: train --crf, the folder, transformers, ONNX, resume


def synthetic_sentences(n: int, seed: int):
    """Short sentences with one to three place or person names (some of two words) among filler
    words, as (tokens, BIO tags): a tiny random BERT learns them in two epochs of a few seconds."""
    import random

    rng = random.Random(seed)
    names = {"LOC": [["Paris"], ["London"], ["New", "York"], ["Buenos", "Aires"], ["Rome"]],
             "PER": [["Anna"], ["John", "Smith"], ["Maria"], ["Peter", "Parker"]]}
    filler = "we saw the big old red house and then went home today".split()
    out = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(1, 3)):
            words = rng.sample(filler, rng.randint(1, 3))
            kind = rng.choice(sorted(names))
            name = rng.choice(names[kind])
            tokens += words + name
            tags += ["O"] * len(words) + [f"B-{kind}"] + [f"I-{kind}"] * (len(name) - 1)
        out.append((tokens, tags))
    return out


@pytest.fixture(scope="module")
def names_files(tmp_path_factory):
    from tagtune.apps.examples import write_conll

    folder = tmp_path_factory.mktemp("names")
    write_conll(folder / "train.conll", synthetic_sentences(200, 0))
    write_conll(folder / "dev.conll", synthetic_sentences(40, 1))
    return folder


def crf_config(tiny_bert, files, out, **change):
    from tagtune import TrainConfig

    return TrainConfig(**{**dict(model=str(tiny_bert), train=str(files / "train.conll"), dev=str(files / "dev.conll"),
                                 out=str(out), epochs=2, lr=3e-3, batch_size=16, seed=3, crf=True, progress=False,
                                 device="cpu"), **change})


def dev_texts(files):
    from tagtune.data.formats import read_examples

    return [ex.text for ex in read_examples(str(files / "dev.conll"))]


@pytest.fixture(scope="module")
def crf_tagger(tiny_bert, names_files, tmp_path_factory):
    from tagtune import train

    out = tmp_path_factory.mktemp("crf") / "tagger"
    return out, train(crf_config(tiny_bert, names_files, out))


def test_trained_crf_folder_loads_in_transformers_and_predicts(crf_tagger, names_files):
    from safetensors import safe_open
    from transformers import AutoModelForTokenClassification

    from tagtune.store.layout import read_crf
    from tagtune import Tagger

    out, result = crf_tagger
    assert json.loads((out / "tagtune.json").read_text())["crf"] is True
    assert json.loads((out / "train_config.json").read_text())["crf"] is True
    saved = json.loads((out / "crf.json").read_text())
    labels = json.loads((out / "config.json").read_text())["id2label"]
    assert saved["labels"] == [labels[str(i)] for i in range(len(labels))] and saved["format"] == 1
    i_person, o = saved["labels"].index("I-PER"), saved["labels"].index("O")
    assert saved["transitions"][o][i_person] is None and saved["start"][i_person] is None  # forbidden by BIO
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "crf" in k or "trans" in k]
    model, info = AutoModelForTokenClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]

    tagger = Tagger.load(out, device="cpu")
    scores = read_crf(out, tagger.labels, "BIO")
    np.testing.assert_array_equal(tagger.transitions.trans, scores.trans)
    assert np.abs(scores.trans[np.isfinite(scores.trans)]).max() > 0  # learned, not the zeros it started from
    texts = dev_texts(names_files)
    spans = tagger(texts)
    assert sum(map(len, spans)) > len(texts) // 2 and result["f1"] > 0.3  # dev F1, decoded with the CRF
    for text, found in zip(texts, spans):
        for s in found:
            assert s.label in ("LOC", "PER") and text[s.start:s.end].strip() == text[s.start:s.end]
            assert 0.0 <= s.score <= 1.0


def test_crf_tagger_exports_to_onnx_with_equal_spans(crf_tagger, names_files, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from tagtune.inference.export import export_onnx
    from tagtune import Tagger

    out, _ = crf_tagger
    onnx_dir = tmp_path / "onnx"
    export_onnx(out, onnx_dir, progress=False)
    assert (onnx_dir / "crf.json").read_text() == (out / "crf.json").read_text()
    torch_tagger = Tagger.load(out, device="cpu", bf16="off")  # fp32, as the export is
    onnx_tagger = Tagger.load(onnx_dir, backend="onnx")
    assert onnx_tagger.backend == "onnx" and onnx_tagger.transitions is not None
    texts = dev_texts(names_files)
    a, b = torch_tagger(texts), onnx_tagger(texts)
    assert any(a) and [[(s.start, s.end, s.label) for s in x] for x in a] == [[(s.start, s.end, s.label) for s in x] for x in b]
    np.testing.assert_allclose([s.score for x in a for s in x], [s.score for x in b for s in x], atol=1e-4)


def test_crf_run_resumes_to_the_same_weights_and_scores(crf_tagger, tiny_bert, names_files, tmp_path,
                                                        monkeypatch):
    """A run stopped after its first epoch and resumed ends as the uninterrupted one: the CRF's
    scores and their optimizer state are in the checkpoint."""
    from tagtune.training import loop as training
    from safetensors.torch import load_file

    from helpers import stop_in_epoch

    whole, _ = crf_tagger
    out = tmp_path / "stopped"
    stop_in_epoch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        training.train(crf_config(tiny_bert, names_files, out))
    saved = torch.load(out / "checkpoint" / "state.pt", weights_only=True)
    assert saved["state"]["epoch"] == 1
    crf_scores = {k for k in load_file(out / "checkpoint" / "model-epoch-1.safetensors") if k.startswith("crf.")}
    assert crf_scores == {"crf.start", "crf.trans", "crf.end"}
    monkeypatch.undo()
    training.train(crf_config(tiny_bert, names_files, out, resume=True))
    assert (out / "crf.json").read_text() == (whole / "crf.json").read_text()
    a, b = load_file(whole / "model.safetensors"), load_file(out / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=0, rtol=0, msg=name)


def test_crf_flag_in_the_cli_help(cli):
    result = cli("train", "--help")
    assert result.returncode == 0 and "--crf" in result.stdout


def test_a_batch_without_labels_has_zero_loss_and_zero_gradients():
    crf = ChainCRF(tag_names(["A"], "BIO"), "BIO")
    logits = torch.randn(5, 3, requires_grad=True)
    nll = crf.nll(logits, torch.full((5,), IGNORE), torch.tensor([0, 2, 5], dtype=torch.int32))
    assert nll.tolist() == [0.0, 0.0]
    nll.sum().backward()
    assert not logits.grad.any() and not crf.trans.grad.any()


def broken_copy(crf_tagger, tmp_path, name, change):
    """A copy of the CRF tagger whose ``name`` (crf.json or tagtune.json) went through ``change``."""
    import shutil

    out, _ = crf_tagger
    folder = tmp_path / "copy"
    shutil.copytree(out, folder)
    data = json.loads((folder / name).read_text())
    change(data)
    (folder / name).write_text(json.dumps(data))
    return folder


def huge_scores(data):  # finite, and each within float64: the sums overflow
    data["start"] = [None if x is None else 1e308 for x in data["start"]]
    data["transitions"] = [[None if x is None else (1e300 if (i + j) % 2 else -1e300) for j, x in enumerate(row)]
                           for i, row in enumerate(data["transitions"])]


def test_crf_scores_out_of_bounds_are_refused_by_predict_and_info(crf_tagger, tmp_path, cli):
    from tagtune.store.layout import CRF_MAX_SCORE

    folder = broken_copy(crf_tagger, tmp_path, "crf.json", huge_scores)
    for command in (("predict", str(folder)), ("info", str(folder))):
        result = cli(*command)
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert result.stderr.count("\n") == 1 and f"{folder / 'crf.json'}: start[" in result.stderr, result.stderr
        assert "is 1e+308, beyond the ±10000" in result.stderr
    # a score at the bound is still read
    edge = broken_copy(crf_tagger, tmp_path / "edge", "crf.json",
                       lambda d: d.update(end=[None if x is None else -CRF_MAX_SCORE for x in d["end"]]))
    assert cli("info", str(edge)).returncode == 0


@pytest.mark.parametrize("name, change, fragment", [
    ("tagtune.json", lambda d: d.update(scheme="BILOU"), "scheme 'BILOU' is not one of"),
    ("tagtune.json", lambda d: d.update(max_length=2), "max_length 2 and stride"),
    ("crf.json", lambda d: d.update(labels=["O"]), "its labels ['O'] are not the model's"),
    ("crf.json", lambda d: d["transitions"].pop(), "transitions must be"),
])
def test_info_checks_tagtune_json_and_crf_json(crf_tagger, tmp_path, cli, name, change, fragment):
    out, _ = crf_tagger
    info = cli("info", str(out))
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["tagger"] == {"scheme": "BIO", "all_subwords": False, "max_length": 128,
                                                 "stride": 32, "crf": True}
    folder = broken_copy(crf_tagger, tmp_path, name, change)
    result = cli("info", str(folder))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"tagtune: error: {folder / name}: ") and fragment in result.stderr, result.stderr
