"""PROMPTEX: a financial layer for AI compute."""

__version__ = "0.1.0"
