"""`python -m bench NAME ...`: run one of fkd-dali's benchmarks (see `bench.BENCHMARKS`)."""
from . import main

if __name__ == "__main__":
    raise SystemExit(main())
