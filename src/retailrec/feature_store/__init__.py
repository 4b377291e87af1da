"""The SQLite feature store shared by training and serving; see :mod:`.store`."""

from retailrec.feature_store.store import SCHEMA_VERSION, connect, open_store

__all__ = ["SCHEMA_VERSION", "connect", "open_store"]
