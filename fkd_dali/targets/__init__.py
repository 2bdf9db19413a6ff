"""Dense training targets: label recovery from stored top-K, the soft cross-entropy, targets of a batch."""
