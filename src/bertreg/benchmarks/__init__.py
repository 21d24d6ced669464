"""Benchmarks run by src/bench.py: each module has a main() that parses its own arguments."""
