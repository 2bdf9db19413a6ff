"""Crops: counter-based crop boxes (`boxes`), the replay plan per pass and rank (`plan`), and the in-memory pass table."""
