import os
import warnings

import pytest
import torch

from tagtune.examples import minilm_dir, wnut_sentences

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=".*TRANSFORMERS_CACHE.*")


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
