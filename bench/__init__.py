"""etcdsync's benchmark harness: `scripts/bench` (or `python bench/run.py`); see bench/README.md."""
