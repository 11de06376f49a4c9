"""The shipped card profiles (package data, read with importlib.resources)."""
