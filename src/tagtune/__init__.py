"""tagtune: fine-tune BERT-family encoders into token taggers that return character spans.

    import tagtune
    tagtune.train(model="bert-base-cased", train="train.conll", out="my-tagger")
    tagtune.Tagger.load("my-tagger")(["Angela Merkel visited Lisbon."])

The heavy modules (torch, the model) load on first use, so ``import tagtune`` is quick.
"""

from tagtune.errors import TagtuneError
from tagtune.spans import Example, Span

__version__ = "0.1.0"

__all__ = ["Example", "Span", "TagtuneError", "Tagger", "TrainConfig", "train", "evaluate", "__version__"]


def train(config=None, /, **settings):
    """Fine-tune a tagger: ``train(TrainConfig(...))`` or ``train(model=..., train=..., out=...)``.
    Returns where the tagger went, the kept epoch, its train loss and its dev scores (None
    without a dev set)."""
    from tagtune.training import TrainConfig
    from tagtune.training import train as run

    if config is None:
        config = TrainConfig(**settings)
    elif settings:
        raise TypeError("pass a TrainConfig or keyword settings, not both")
    return run(config)


def evaluate(directory, path, **options):
    """Entity scores of a trained tagger on an annotated file."""
    from tagtune.training import evaluate as run

    return run(directory, path, **options)


def __getattr__(name):
    if name == "Tagger":
        from tagtune.tagger import Tagger

        return Tagger
    if name == "TrainConfig":
        from tagtune.training import TrainConfig

        return TrainConfig
    raise AttributeError(f"module 'tagtune' has no attribute {name!r}")
