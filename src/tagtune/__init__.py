"""tagtune: fine-tune BERT-family encoders into token taggers that return character spans.

    import tagtune
    tagtune.train(model="bert-base-cased", train="train.conll", out="my-tagger")
    tagtune.Tagger.load("my-tagger")(["Angela Merkel visited Lisbon."])

The public API is what ``__all__`` names. Tagger and TrainConfig, and the modules behind
train() and evaluate(), are imported on first use (torch, the model), so ``import tagtune`` is
quick.
"""

from typing import TYPE_CHECKING

from tagtune.errors import TagtuneError
from tagtune.spans import Example, Span
from tagtune.version import __version__

if TYPE_CHECKING:  # for type checkers and the API pages; imported on first use below
    from tagtune.inference.tagger import Tagger
    from tagtune.training.config import TrainConfig

__all__ = ["Example", "Span", "TagtuneError", "Tagger", "TrainConfig", "train", "evaluate", "__version__"]


def train(config=None, /, **settings):
    """Fine-tune a tagger: ``train(TrainConfig(...))`` or ``train(model=..., train=..., out=...)``.
    Returns where the tagger went, the kept epoch, its train loss and its dev scores (None
    without a dev set)."""
    from tagtune.training.config import TrainConfig
    from tagtune.training.loop import train as run  # lazy, as all of these: the loop imports torch

    if config is None:
        config = TrainConfig(**settings)
    elif settings:
        raise TypeError("pass a TrainConfig or keyword settings, not both")
    return run(config)


def evaluate(directory, path, **options):
    """Entity scores of a trained tagger on an annotated file."""
    from tagtune.inference.evaluate import evaluate as run  # lazy: numpy, tokenizers and the tagger on first use

    return run(directory, path, **options)


def __getattr__(name):
    # Tagger and TrainConfig on first use, so that ``import tagtune`` stays light.
    if name == "Tagger":
        from tagtune.inference.tagger import Tagger

        return Tagger
    if name == "TrainConfig":
        from tagtune.training.config import TrainConfig

        return TrainConfig
    raise AttributeError(f"module 'tagtune' has no attribute {name!r}")
