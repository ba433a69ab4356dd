"""Alembic environment: runs on the connection the archive hands over.

The archive calls Alembic programmatically (``archive/db.py``), passing its
open connection in ``config.attributes["connection"]``; there is no
``alembic.ini`` and no URL here.
"""

from alembic import context

from hilum.archive.schema import metadata  # THE schema: every table of the index database

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
