"""Maps of a features run: projection (t-SNE, UMAP, PCA), the torch t-SNE, its neighbour graph, map quality,
and the map store (cached maps). Part of core.analysis; may import what core.analysis may."""
