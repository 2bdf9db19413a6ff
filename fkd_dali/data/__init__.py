"""The dataset: an ImageNet-style folder indexed and fingerprinted (`index`), and the bundled real photos (`sample_data`)."""
