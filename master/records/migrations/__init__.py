"""Alembic environment and revisions of the records database (run via ``db.upgrade``)."""
