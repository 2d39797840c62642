"""txwatch stream side: event schema, feature engine, student scoring, sinks and agents.

Nothing here imports ``training``; importing the pure modules (schema, features, model)
does not import faust or redis.
"""
