"""Benchmarks: commands that print one JSON object (``txwatch bench models|stream|soak``).
Nothing in the runtime path imports them."""
