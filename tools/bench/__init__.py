"""Helpers of tools/benchmark_hqod.py: the run plan, running train_net.py, results, plots, speed, report."""
