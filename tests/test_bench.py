"""The bench scripts run end to end (their --smoke modes: tiny data, seconds)."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def smoke(script, *args, env=None):
    """``script --smoke ARGS`` in a new process (``env``: its environment); its stdout. The
    bench's work folder (models, data, outputs) is made in a temporary folder removed after it."""
    with tempfile.TemporaryDirectory(prefix="bench-smoke-") as temporary:
        result = subprocess.run([sys.executable, str(BENCH / script), "--smoke", *args], capture_output=True,
                                text=True, timeout=600, env=dict(env if env is not None else os.environ, TMPDIR=temporary))
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_train_bench_smoke():
    out = smoke("train_bench.py")
    assert "tagtune/trainer" in out and "f1_seqeval_words" in out and "train_tokens_per_second" in out


@pytest.mark.parametrize("family, architecture", [("modernbert", "ModernBertForMaskedLM"),
                                                  ("deberta-v3", "DebertaV2ForMaskedLM")])
def test_random_family_checkpoints(family, architecture, tiny_bert, tmp_path):
    """--family's random checkpoints take the shape and tokenizer of the model they are like, and
    tagtune loads them (the rest of the bench is the same as for a pretrained model)."""
    sys.path.insert(0, str(BENCH))
    from train_bench import random_model

    from tagtune.models.checkpoint import load_model

    folder = random_model(family, tmp_path / family, tiny_bert)
    config = json.loads((folder / "config.json").read_text())
    like = json.loads((tiny_bert / "config.json").read_text())
    assert config["architectures"] == [architecture]
    assert [config[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size")] == \
        [like[k] for k in ("hidden_size", "num_hidden_layers", "vocab_size")]
    assert (folder / "tokenizer.json").read_bytes() == (tiny_bert / "tokenizer.json").read_bytes()
    model, report = load_model(folder, labels=["O", "B-X", "I-X"])
    assert report.new_head and model.config.model_type == config["model_type"]


def test_predict_bench_smoke(tmp_path):
    # the padded path runs in fp32: the tagtune side's --bf16 auto is made fp32 too, whatever the CPU
    out = smoke("predict_bench.py", "--json", tmp_path / "predict.json",
                env=dict(os.environ, TAGTUNE_CPU_BF16="off"))
    assert "tagtune/pipeline" in out and "tokens_per_second" in out and "dev_f1" in out
    assert "texts whose spans equal tagtune's padded path: 100/100" in out
    results = json.loads((tmp_path / "predict.json").read_text())["results"]
    assert list(results) == ["pipeline", "tagtune", "tagtune-bf16"]
    assert (results["tagtune"]["precision"], results["tagtune-bf16"]["precision"]) == ("fp32", "bf16")
    # without runs/wnut-minilm the tagger has a random head, whose near-equal logits bf16 may tip
    # either way: agreement is counted, and asserted on a trained tagger in test_precision.py
    assert 0 < results["tagtune-bf16"]["texts_equal_to_tagtune"] <= 100


@pytest.mark.skipif("avx2" not in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else True,
                    reason="needs an x86 CPU with AVX2")
def test_predict_bench_limits_the_kernels_to_avx2(tmp_path):
    """--kernels avx2 runs the bench, and every side in it, as on an AVX2-only CPU, and says so."""
    measured = {k: v for k, v in os.environ.items() if k != "TAGTUNE_CPU_BF16"}  # auto as the CPU measures
    smoke("predict_bench.py", "--kernels", "avx2", "--sides", "pipeline,tagtune", "--json", tmp_path / "predict.json",
          env=measured)
    recorded = json.loads((tmp_path / "predict.json").read_text())
    assert recorded["kernels"].startswith("AVX2 (") and "ONEDNN_MAX_CPU_ISA=AVX2" in recorded["kernels"]
    assert recorded["results"]["tagtune"]["precision"] == "fp32"  # bf16 is emulated there: --bf16 auto keeps fp32


def test_calibration_bench_smoke(tmp_path):
    """Two folds: two trainings, each holding out other tweets, their spans pooled."""
    out = smoke("calibration_bench.py", "--folds", "2", "--json", tmp_path / "calibration.json")
    assert "mean tag probability" in out and "span probability" in out
    results = json.loads((tmp_path / "calibration.json").read_text())
    assert results["folds"] == 2 and results["test_tweets"] == 40 and len(results["temperatures"]) == 2
    assert out.count("fine-tuning MiniLM") == 2 and "(2 folds, each held out once)" in out
    for row in ("expected calibration error", "average precision", "precision of top 10% spans",
                "precision of top 50% spans", "max score"):
        assert row in out, row


def test_select_bench_smoke(tmp_path):
    out = smoke("select_bench.py", "--json", tmp_path / "select.json")
    assert "median random" in out and "median select" in out
    results = json.loads((tmp_path / "select.json").read_text())
    assert results["labelled"] == [20, 30] and results["seeds"] == [42]
    for strategy in ("random", "select"):
        f1 = results["runs"]["42"][strategy]
        assert len(f1) == 2 and all(0.0 <= x <= 1.0 for x in f1)


def test_select_bench_takes_the_median_over_seeds(tmp_path, monkeypatch, capsys):
    """The medians the select bench prints and records are over the seeds, round by round (each
    seed's run is replaced here by known scores; --smoke runs a single seed)."""
    sys.path.insert(0, str(BENCH))
    import select_bench

    scores = {1: {"random": [0.1, 0.5], "select": [0.4, 0.8]}, 2: {"random": [0.3, 0.2], "select": [0.0, 0.6]},
              3: {"random": [0.2, 0.9], "select": [0.7, 0.7]}}
    monkeypatch.setattr(select_bench, "run_seed", lambda seed, *rest: scores[seed])
    monkeypatch.setattr(sys, "argv", ["select_bench.py", "--seeds", "1,2,3", "--rounds", "1", "--start", "20",
                                      "--step", "10", "--json", str(tmp_path / "select.json")])
    select_bench.main()
    results = json.loads((tmp_path / "select.json").read_text())
    assert results["medians"] == {"random": [0.2, 0.5], "select": [0.4, 0.7]}
    assert capsys.readouterr().out.splitlines()[-1].split()[-2:] == ["0.5000", "0.7000"]


def test_scale_bench_smoke(tmp_path):
    out = smoke("scale_bench.py", "--json", tmp_path / "scale.json")
    assert "| tagtune predict" in out and "| tagtune train, --max-length" in out and "10N/N" in out
    results = json.loads((tmp_path / "scale.json").read_text())
    prediction, training = results["prediction"], results["training"]
    assert [prediction[k]["texts"] for k in ("N", "10N")] == [20, 200]
    assert 0 < prediction["N"]["tokens"] < prediction["10N"]["tokens"]
    assert training["documents"] == 2 and [training[k]["max_length"] for k in ("64", "128")] == [64, 128]
    assert training["64"]["windows"] > training["128"]["windows"] > 0
    for ratio in (prediction["ratios"]["wall_seconds"], prediction["ratios"]["peak_rss_mb"],
                  training["ratios"]["tokens_per_second"], training["ratios"]["peak_rss_mb"]):
        assert ratio > 0


def test_plots_of_the_results_and_a_file_missing_a_field(tmp_path, capsys):
    """bench/plots.py draws every plot from the recorded results, and leaves a results file without
    a field a plot needs out of that plot, with a warning (the same results give the same bytes)."""
    spec = importlib.util.spec_from_file_location("bench_plots", BENCH / "plots.py")
    plots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plots)
    names = ["train-speed.png", "train-wall.png", "f1-seeds.png", "predict-speed.png", "calibration.png"]

    written = plots.write_plots(BENCH, tmp_path / "out")
    assert [p.name for p in written] == names
    for path in written:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000, path.name
    assert "warning" not in capsys.readouterr().err

    broken, alone = tmp_path / "broken-results", tmp_path / "other-results"
    for folder in (broken, alone):
        folder.mkdir()
        shutil.copy(BENCH / "results-train-cpu-intel.json", folder)
    record = json.loads((BENCH / "results-train-cpu.json").read_text())
    del record["medians"]["trainer"]["train_tokens_per_second"]
    (broken / "results-train-cpu.json").write_text(json.dumps(record))
    written = plots.write_plots(broken, tmp_path / "broken")
    err = capsys.readouterr().err
    assert err.splitlines() == ["warning: results-train-cpu.json: no medians.trainer.train_tokens_per_second: "
                                "left out of train-speed.png"]
    assert [p.name for p in written] == ["train-speed.png", "train-wall.png", "f1-seeds.png"]
    # left out of train-speed.png only: that plot is the one of the other file alone, train-wall.png is not
    speed, wall, _ = plots.write_plots(alone, tmp_path / "alone-plots")
    assert written[0].read_bytes() == speed.read_bytes() and written[1].read_bytes() != wall.read_bytes()


def test_span_bench_smoke(tmp_path):
    out = smoke("span_bench.py", "--json", tmp_path / "span.json")
    assert "span/token" in out and "predict_tokens_per_second" in out
    results = json.loads((tmp_path / "span.json").read_text())
    assert list(results["medians"]) == ["token", "span"]
    assert all(r["train_tokens_per_second"] > 0 and r["peak_rss_mb"] > 0 for rs in results["runs"].values() for r in rs)


def test_label_bench_smoke(tmp_path):
    out = smoke("label_bench.py", "--json", tmp_path / "label.json")
    assert "| server slots | concurrency |" in out and "student trained on teacher labels" in out
    results = json.loads((tmp_path / "label.json").read_text())
    throughput, taught = results["throughput"], results["student"]
    assert list(throughput["settings"]) == ["enough", "2"]
    for slots, rows in throughput["settings"].items():
        for concurrency, row in rows.items():  # every tweet asked once, in each run
            assert row["requests"] == 12
            served = min(int(concurrency), 2 if slots == "2" else 4)
            assert row["ideal_texts_per_second"] == pytest.approx(served / 0.05)
    assert taught["teacher"]["labelled"]["train"]["requests"] == 27 and taught["seeds"] == [42]
    assert 0 < taught["teacher"]["train_scores"]["f1"] < 1  # the stand-in's errors are in the teacher's labels
    assert 0 <= taught["medians"]["teacher"]["f1"] <= 1 and taught["student_texts_per_second"] > 0


@pytest.mark.parametrize("family, architecture", [("eurobert", "EuroBertForMaskedLM"), ("qwen3", "Qwen3ForCausalLM")])
def test_llama_layout_checkpoints_tokenize_as_the_trainer_does(family, architecture, tiny_bert, tweets, tmp_path):
    """--family eurobert and qwen3 learn a byte-level BPE on the training texts; transformers'
    tokenizer of the folder gives the Trainer's words the pieces tagtune gives the whole text, and
    tagtune loads the checkpoint."""
    sys.path.insert(0, str(BENCH))
    import transformers
    from train_bench import random_model

    from tagtune.models.checkpoint import load_model
    from tagtune.text.tokenizer import load_tokenizer

    words = [tokens for tokens, _ in tweets[:60]]
    texts = [" ".join(tokens) for tokens in words]
    folder = random_model(family, tmp_path / family, tiny_bert, texts)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == [architecture]
    assert config["hidden_size"] == json.loads((tiny_bert / "config.json").read_text())["hidden_size"]
    ours = [e.ids for e in load_tokenizer(folder).encode_batch(texts)]
    theirs = transformers.AutoTokenizer.from_pretrained(folder)(words, is_split_into_words=True)["input_ids"]
    if family == "eurobert":  # the same pieces, between <|begin_of_text|> and <|end_of_text|>
        assert [ids[1:-1] for ids in theirs] == ours
        assert {ids[0] for ids in theirs} == {config["bos_token_id"]}
    else:  # Qwen2Tokenizer's add_prefix_space also puts a space before a word's inner pieces (":", "//")
        assert sum(a == b for a, b in zip(theirs, ours)) >= len(texts) / 2
    model, report = load_model(folder, labels=["O", "B-X", "I-X"])
    assert report.new_head and model.config.model_type == family
