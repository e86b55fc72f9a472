"""Datasets: the manifest format every source shares, and the embedded compositional scenes."""
from .manifest import SPLITS, Dataset, ImageRecord, load_dataset, write_dataset

__all__ = ["SPLITS", "Dataset", "ImageRecord", "load_dataset", "write_dataset"]
