"""Layer 2, data: dataset references -> one Dataset interface (ids, labels, splits, metadata, uint8 images).

Sources: ``sources`` (open_dataset and the reference strings), synthetic, h5, hf, folder, fits, catalogue
(parquet:), paper_split, sky (positions and survey links), hub (HF snapshots).
May import: core.store, core.errors. Never models, extraction, analysis or the CLI.
"""
