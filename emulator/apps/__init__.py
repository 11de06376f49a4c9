"""The on-card applications, one module each, built from a profile."""
