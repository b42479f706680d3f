"""Testing support for flavorkit and for backend authors (the conformance kit lives here)."""
