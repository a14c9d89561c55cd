"""IP tokenizers: SentencePiece training, merging into a base vocabulary, HF export, reports."""
