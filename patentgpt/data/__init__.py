"""Token shards, the pretraining mixture loader and corpus tokenization."""
