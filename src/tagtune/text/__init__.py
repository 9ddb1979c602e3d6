"""Text into tokens with character offsets: the tokenizers (WordPiece, BPE, Unigram, SentencePiece,
the Japanese word splitter), their post-processing and the repair of their offsets."""
