"""cropi: off-policy influence guided RLVR data selection (arXiv 2510.26491). Not implemented yet."""
