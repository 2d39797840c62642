"""The txwatch command line, the demo, the embedded servers (local/) and the benchmarks (bench/)."""
