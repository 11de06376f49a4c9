"""Personalisation: TOML card profiles, derived PINs, a test JPKI certificate hierarchy, and
the images and records of the national applications. Import the submodule you need (the
image drawing in `generate` loads Pillow; reading a profile does not)."""
