"""Data: dataset readers, sample corpus, WebDataset shards, object storage (no Ray here)."""
