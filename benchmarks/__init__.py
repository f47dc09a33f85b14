"""`make bench`: component speed measurements, written to bench-results/ (never asserted in tests)."""
