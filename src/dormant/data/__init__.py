"""Data sources, in-memory datasets, forget-set specs and splits."""

from dormant.data.dataset import Dataset, stratified_subset
from dormant.data.forget import ForgetSpec, parse_forget, select_forget
from dormant.data.sources import available_sources, default_cache_dir, load_dataset
from dormant.data.split import Split, make_split

__all__ = [
    "Dataset", "ForgetSpec", "Split", "available_sources", "default_cache_dir", "load_dataset",
    "make_split", "parse_forget", "select_forget", "stratified_subset",
]
