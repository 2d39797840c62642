"""Operator tools: publish an events file to Kafka (replay), re-key a topic (repartition)."""
