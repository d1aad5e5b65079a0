"""Benchmarks behind ``voxgate bench``: engine throughput, load, soak."""
