"""reg2cls: turn a PyTorch regression model into the best classifier derived from it.

Importing the package imports neither torch nor mlflow, so the CLI's --help stays instant.
"""
__version__ = "0.1.0"
