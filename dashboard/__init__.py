"""The Streamlit app: reads what `core` cached and shows it."""
