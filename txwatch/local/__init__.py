"""Embedded servers for the demo, benchmarks and tests: Tansu (Kafka protocol) and Redis."""
