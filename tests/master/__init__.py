"""master tests."""
