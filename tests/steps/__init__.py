"""steps tests."""
