"""plt: Parallel Loop Transformer (arXiv 2510.24824). Not implemented yet."""
