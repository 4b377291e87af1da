"""Test instruments: a generator of Retailrocket-shaped shops with known preferences, and the
oracle that reads those preferences back. Nothing in the production path imports this package;
training reaches the oracle only when asked to score against a synthetic shop's truth."""
