"""Jobs above the library: the demo, the benchmarks and soft-label generation, built on api."""
