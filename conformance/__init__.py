"""The conformance bench: property-based APDU sequences against a card (see the README)."""
