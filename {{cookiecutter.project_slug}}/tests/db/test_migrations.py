from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from app.db.base import Base
from app.db.session import build_engine


def test_migrations_match_the_models(migrated_database: str) -> None:
    engine = build_engine(migrated_database)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        tables = set(inspect(connection).get_table_names())
    engine.dispose()
    assert differences == [], f"models and migrations differ: {differences}"
    assert "items" in tables, tables
