"""Runners: the faust app (with its batcher) and the plain aiokafka loop, thin over the core."""
