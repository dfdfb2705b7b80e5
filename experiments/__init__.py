"""Experiments that compose lightquant, plt and cropi."""
