"""``make bench``: throughput, latency, token, memory and CPU figures of the worker.

Every figure is a ratio against a baseline measured in the same run (see ``bench/run.py``),
so a noisy shared machine moves both sides of each ratio together.
"""
