"""Benchmark suite: cloudckpt against the checkpoint libraries users would pick instead.

Run ``python -m benchmarks.run --help``; see docs/benchmarks.md for results and
method. Peers (torch, safetensors, orbax, ...) are optional: a peer that is not
installed is skipped with a note. Nothing here is imported by cloudckpt.
"""
