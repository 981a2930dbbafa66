"""Episodes and datasets: Minari storage, collection, HDF5 import/export, device samplers."""

from embodied.data.episodes import (
    DatasetError,
    Episode,
    dataset_id,
    dataset_path,
    delete_dataset,
    list_datasets,
    read_episodes,
    write_dataset,
)
from embodied.data.dataset import Batch, Dataset, load_dataset

__all__ = [
    "Batch",
    "Dataset",
    "DatasetError",
    "Episode",
    "dataset_id",
    "dataset_path",
    "delete_dataset",
    "list_datasets",
    "load_dataset",
    "read_episodes",
    "write_dataset",
]
