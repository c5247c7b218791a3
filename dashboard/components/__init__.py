"""Custom Streamlit components (their frontends are plain files, no build step)."""
