"""tagtune: fine-tune BERT-family encoders into token taggers that return character spans."""

from tagtune.errors import TagtuneError

__version__ = "0.1.0"

__all__ = ["TagtuneError", "__version__"]
