"""Experiment configs: one file per paper table or figure, each with get_config(arg)."""
