"""txwatch command-line entry point."""
