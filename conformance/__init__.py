"""The conformance bench: property-based APDU sequences against a card (see docs/bench.md)."""
