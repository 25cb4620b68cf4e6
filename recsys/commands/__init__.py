"""The `recsys` commands, built on the library: `cli` (the entry point), `train`, `report`. The
benchmarks are commands too and live in `recsys.bench`."""
