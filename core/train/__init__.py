"""Layer 6, train: finetune (head-only / full) and DINO pretraining.

May import: core.analysis, core.extract, core.models, core.data, core.store, core.errors.
"""
