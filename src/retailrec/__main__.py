"""`python -m retailrec` runs the CLI."""

from retailrec.cli import app

if __name__ == "__main__":
    app()
