"""The bench scripts run end to end (their --smoke modes: tiny data, seconds)."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def smoke(script, *args):
    result = subprocess.run([sys.executable, str(BENCH / script), "--smoke", *args], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_train_bench_smoke():
    out = smoke("train_bench.py")
    assert "tagtune/trainer" in out and "f1_seqeval_words" in out and "train_tokens_per_second" in out


def test_train_bench_random_family_smoke():
    """One of the random families (ModernBERT's differs in its config only) through tagtune's side."""
    out = smoke("train_bench.py", "--family", "deberta-v3", "--only", "tagtune")
    assert "a random deberta-v3 of the MiniLM's shape" in out and "train_tokens_per_second" in out


def test_predict_bench_smoke():
    out = smoke("predict_bench.py")
    assert "tagtune/pipeline" in out and "tokens_per_second" in out
    assert "texts whose spans equal tagtune's padded path: 100/100" in out
