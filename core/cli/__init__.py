"""Layer 7, cli: `python -m core <verb>`, one module per verb, and the demo recipe.

May import everything in core below it.
"""
