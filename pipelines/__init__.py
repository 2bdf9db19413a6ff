"""DALI pipeline definitions for fkd-dali: small graph functions, built by `make_*_pipeline`.

`fragments.decode_and_crop` is the only code that decodes and cuts stored crops, so
the teacher (label generation) and the student (replay) see identical pixels; only
the output size and normalization differ.

This package holds graph definitions and their builders only: no loaders, no file I/O,
and no imports from the rest of fkd_dali beyond `fkd_dali.errors` and `fkd_dali.defaults`.
"""
