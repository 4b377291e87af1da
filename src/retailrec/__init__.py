"""RetailRec: a production recommendation engine for online shops.

Importing the package is cheap: torch, mlflow and streamlit load only where they are used.
"""

__version__ = "0.1.0"
