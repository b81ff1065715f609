"""Test support: kits, fakes and fixtures shared by the test modules and bench/.

Nothing here is a test. Fixtures defined here are registered for every test
through ``pytest_plugins`` in tests/conftest.py, so no test imports a fixture
by name and no test module imports another test module.
"""
