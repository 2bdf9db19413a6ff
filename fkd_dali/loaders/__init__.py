"""Loaders that yield device batches: replay of stored crops, vanilla random crops, validation,
synthetic; and the feed into DALI."""
