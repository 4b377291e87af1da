"""The serving API (FastAPI). ``retailrec.api.main.create_app`` builds it."""
