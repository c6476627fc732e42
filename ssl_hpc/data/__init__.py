"""Datasets as in-memory uint8 tensors, label budgets, class weights and batched augmentation."""

from ssl_hpc.data.splits import ImageSplit, LabeledDataset

__all__ = ["ImageSplit", "LabeledDataset"]
