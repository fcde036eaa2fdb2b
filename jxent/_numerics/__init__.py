"""Shared numerics: argument checks, the one log-sum-exp, parsed options."""
