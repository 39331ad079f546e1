"""Datasets: HF patch datasets, GeoTIFF scene catalogs (TorchGeo), augmentation and the synthetic generator."""
