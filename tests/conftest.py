import os
import signal
import warnings
from pathlib import Path

import pytest
import torch

from tagtune.apps.examples import minilm_dir, wnut_sentences, write_conll

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A shell without job control starts its background commands with SIGINT ignored, and an ignored
# signal stays ignored in every process started from them: tagtune's processes would then never
# see the Ctrl-C the tests send. Handled here, SIGINT reaches them with its default action.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
warnings.filterwarnings("ignore", message=".*TRANSFORMERS_CACHE.*")

CONSTRAINTS = Path(__file__).resolve().parent.parent / "scripts" / "constraints.txt"


def pytest_addoption(parser):
    parser.addoption("--require-browser", action="store_true",
                     help="fail, not skip, the browser tests where no Chromium can run them (also where CI is set)")
    parser.addoption("--unpinned", action="store_true",
                     help=f"the suite runs on the newest releases (make test-latest): the environments the "
                          f"tests install are not held to {CONSTRAINTS.name}")


def pytest_configure(config):
    import helpers

    helpers.BROWSER_REQUIRED = helpers.BROWSER_REQUIRED or config.getoption("--require-browser")


def pytest_report_header(config):
    """What ``--bf16 auto`` means on this CPU in this run, the kernels' limits and whether the
    browser tests must run: the suite's modes (make test-bf16-on, test-bf16-off, test-avx2,
    test-latest) show here."""
    import helpers
    from tagtune import TagtuneError
    from tagtune.models.precision import describe, use_bf16

    cpu = torch.device("cpu")
    try:
        auto = describe("auto", cpu, use_bf16("auto", cpu))
    except TagtuneError as e:
        auto = str(e)
    limits = [f"{k}={os.environ[k]}" for k in ("MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
              if k in os.environ]
    return [f"tagtune: --bf16 auto on this CPU: {auto}",
            f"tagtune: torch CPU kernels {torch.backends.cpu.get_cpu_capability()}"
            + (f" ({', '.join(limits)})" if limits else ""),
            f"tagtune: browser tests {'required' if helpers.BROWSER_REQUIRED else 'skipped without Chromium'}, "
            + ("newest releases (--unpinned)" if config.getoption("--unpinned") else f"pinned by {CONSTRAINTS.name}")]


@pytest.fixture(scope="session")
def pip_constraints(pytestconfig) -> list[str]:
    """pip's arguments that hold an environment a test installs to scripts/constraints.txt, the
    versions the suite runs on; none with --unpinned."""
    return [] if pytestconfig.getoption("--unpinned") else ["-c", str(CONSTRAINTS)]


@pytest.fixture(scope="session")
def minilm():
    return minilm_dir()


@pytest.fixture(scope="session")
def tweets():
    """Real WNUT-2016 tweets as (tokens, tags)."""
    return wnut_sentences()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_hf_model(kind: str, num_labels: int = 5, task: str = "token"):
    """A tiny random transformers model of one family, made in the test (no weights needed)."""
    import transformers as T

    kw = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=37, max_position_embeddings=64)
    configs = {
        "bert": lambda: T.BertConfig(**kw),
        "roberta": lambda: T.RobertaConfig(**kw, type_vocab_size=1, pad_token_id=1),
        "xlm-roberta": lambda: T.XLMRobertaConfig(**kw, type_vocab_size=1, pad_token_id=1),
        "electra": lambda: T.ElectraConfig(**kw, embedding_size=16),
        "distilbert": lambda: T.DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4,
                                                 hidden_dim=37, max_position_embeddings=64),
        # local layers see 4 tokens each side: shorter than the test texts, so the window matters
        "modernbert": lambda: T.ModernBertConfig(**{**kw, "num_hidden_layers": 3}, local_attention=8,
                                                 pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
                                                 sep_token_id=2, global_rope_theta=1000.0, local_rope_theta=50.0),
    }
    config = configs[kind]()
    config.num_labels = num_labels
    classes = {
        "token": T.AutoModelForTokenClassification,
        "masked-lm": T.AutoModelForMaskedLM,
        "sequence": T.AutoModelForSequenceClassification,
        "base": T.AutoModel,
    }
    return classes[task].from_config(config).eval()


@pytest.fixture
def cli(capsys):
    """``cli(*args)``: tagtune.apps.cli.main in this process; a Result (returncode, stdout, stderr)."""
    from helpers import run_main

    return lambda *args: run_main(capsys, *args)


def make_tiny_bert(folder, **config):
    """Save a small random BERT (seed 0) with the real MiniLM vocabulary and tokenizer in
    ``folder``; ``config`` changes its BertConfig (dropout, ...)."""
    import shutil

    import transformers as T

    torch.manual_seed(0)
    config = T.BertConfig(**{**dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=64, max_position_embeddings=512), **config})
    T.BertModel(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_dir() / name, folder / name)
    return folder


def tiny_with_minilm_tokenizer(folder, kind: str, **config):
    """A small random pretraining checkpoint of ``kind`` ("modernbert", "deberta-v2"; seed 0)
    with the real MiniLM tokenizer (30,522 ids) in ``folder``; ``config`` changes its config."""
    import shutil

    import transformers as T

    torch.manual_seed(0)
    sizes = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                 intermediate_size=48, max_position_embeddings=256, pad_token_id=0)
    if kind == "modernbert":
        settings = dict(local_attention=16, cls_token_id=101, sep_token_id=102, bos_token_id=101, eos_token_id=102)
        model = T.ModernBertForMaskedLM(T.ModernBertConfig(**{**sizes, **settings, **config}))
    else:  # deberta-v3's settings, with buckets shorter than tweets
        settings = dict(relative_attention=True, position_buckets=16, max_relative_positions=64,
                        pos_att_type=["p2c", "c2p"], share_att_key=True, norm_rel_ebd="layer_norm",
                        position_biased_input=False, type_vocab_size=0)
        model = T.DebertaV2ForMaskedLM(T.DebertaV2Config(**{**sizes, **settings, **config}))
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_dir() / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, minilm):
    """A small random BERT with the real MiniLM vocabulary and tokenizer: trains in seconds."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def wnut_files(tmp_path_factory, tweets):
    """Real tweets as CoNLL files: train (300) and dev (60)."""
    folder = tmp_path_factory.mktemp("wnut")
    for name, part in (("train.conll", tweets[:300]), ("dev.conll", tweets[300:360])):
        write_conll(folder / name, part)
    return folder


@pytest.fixture(scope="session")
def tiny_tagger(tiny_bert, wnut_files, tmp_path_factory):
    """The tiny BERT trained for one epoch on the WNUT train file: a small real tagger folder."""
    import tagtune

    out = tmp_path_factory.mktemp("tiny-tagger") / "tagger"
    tagtune.train(model=str(tiny_bert), train=str(wnut_files / "train.conll"), out=str(out), epochs=1, lr=1e-3,
                  progress=False, device="cpu")
    return out


@pytest.fixture(scope="session")
def trained_tagger(tmp_path_factory, tweets):
    """A real tagger folder: MiniLM fine-tuned for 2 epochs on 600 WNUT tweets (about 20 s).

    Shared by the tests of everything downstream of training (loading in transformers,
    export, serving); it predicts real spans, not only "O".
    """
    import tagtune

    folder = tmp_path_factory.mktemp("trained")
    train = folder / "train.conll"
    write_conll(train, tweets[:600])
    out = folder / "tagger"
    tagtune.train(model=str(minilm_dir()), train=str(train), out=str(out), epochs=2, lr=4e-4,
                  seed=0, progress=False, device="cpu")
    return out


@pytest.fixture(scope="session")
def exported(trained_tagger, tmp_path_factory):
    """The trained tagger exported to an fp32 ONNX folder, and the export's report."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from tagtune.inference.export import export_onnx

    out = tmp_path_factory.mktemp("export") / "onnx"
    return out, export_onnx(trained_tagger, out)


@pytest.fixture(scope="session")
def stand_in_hub(minilm, tmp_path_factory):
    """The stand-in Hub serving the models README.md and the documentation pages name (see
    tests/docblocks.py)."""
    from docblocks import japanese_bert, japanese_modernbert
    from hub_server import HubServer

    with HubServer() as server:
        server.add("sentence-transformers/all-MiniLM-L6-v2", minilm)
        server.add("cl-tohoku/bert-base-japanese-v3", japanese_bert(tmp_path_factory.mktemp("ja") / "model"))
        server.add("sbintuitions/modernbert-ja-70m", japanese_modernbert(tmp_path_factory.mktemp("ja-mb") / "model"))
        yield server

