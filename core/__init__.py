"""Galaxy embedding explorer engine: datasets -> features -> projections -> cache.

No Streamlit import anywhere in this package.
"""
__version__ = "0.1.0"
