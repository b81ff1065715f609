"""workers tests."""
