"""Adapters from the core's ports to real services: Redis (state store), Kafka (topics,
publishing), and the model watcher."""
