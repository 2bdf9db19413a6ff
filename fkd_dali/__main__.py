"""`python -m fkd_dali ...` is the same as the `fkd-dali` console script."""
from fkd_dali.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
