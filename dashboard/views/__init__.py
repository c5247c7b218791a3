"""One module per view, plus the sidebar and what they share."""
