"""The benchmark suite behind ``bench/run.py``: servers, scenarios, report."""
