"""The report: near-duplicates found across each split pair, as counts, listed pairs, metrics and tables.

Frozen data, made by :func:`ssl_hpc.data.duplicates.leakage.duplicate_report`: the counts go to
MLflow (:meth:`DuplicateReport.as_metrics`), the tables (pandas, imported when asked for) to
artifacts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class DuplicatePair:
    """One near-duplicate pair: image ``first_index`` of split ``first``, ``second_index`` of ``second``."""

    first: str
    first_index: int
    second: str
    second_index: int
    distance: int  # pHash Hamming distance
    correlation: float  # of the 16 x 16 thumbnails
    first_label: int
    second_label: int


@dataclass(frozen=True)
class SplitPairCount:
    pairs: int  # near-duplicate (first, second) pairs
    first_images: int  # distinct images of the first split involved
    second_images: int  # distinct images of the second split with a near-duplicate in the first
    label_conflicts: int  # pairs whose two labels differ
    hash_matches: int  # pairs within the pHash threshold, before the correlation check


@dataclass(frozen=True)
class DuplicateReport:
    """Near-duplicates across each split pair (train-val, train-test, val-test)."""

    dataset: str
    threshold: int
    min_correlation: float
    counts: Mapping[tuple[str, str], SplitPairCount]
    pairs: tuple[DuplicatePair, ...] = ()  # at most ``max_pairs``, by split pair then index
    pairs_truncated: bool = False
    sizes: Mapping[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(count.pairs for count in self.counts.values())

    @property
    def clean(self) -> bool:
        return self.total == 0

    def count(self, first: str, second: str) -> int:
        """Near-duplicate pairs between two splits (in either order)."""
        key = (first, second) if (first, second) in self.counts else (second, first)
        return self.counts[key].pairs

    def as_metrics(self) -> dict[str, float]:
        """For MLflow, per split pair: ``duplicates_train_test`` (pairs), ``duplicates_train_test_images``
        (distinct test images with a near-duplicate in train), ``..._label_conflicts`` (pairs whose
        labels differ); and ``duplicates_total``."""
        metrics: dict[str, float] = {}
        for (first, second), count in self.counts.items():
            metrics[f"duplicates_{first}_{second}"] = float(count.pairs)
            metrics[f"duplicates_{first}_{second}_images"] = float(count.second_images)
            metrics[f"duplicates_{first}_{second}_label_conflicts"] = float(count.label_conflicts)
        metrics["duplicates_total"] = float(self.total)
        return metrics

    def as_table(self):
        """One row per split pair (a pandas DataFrame), e.g. for a CSV artifact or a Markdown table."""
        import pandas as pd

        rows = [
            {
                "splits": f"{first}-{second}",
                "pairs": count.pairs,
                "first_images": count.first_images,
                "second_images": count.second_images,
                "second_size": self.sizes.get(second, 0),
                "label_conflicts": count.label_conflicts,
                "hash_matches": count.hash_matches,
            }
            for (first, second), count in self.counts.items()
        ]
        frame = pd.DataFrame(rows)
        frame.attrs.update(dataset=self.dataset, threshold=self.threshold, min_correlation=self.min_correlation)
        return frame

    def pairs_table(self, names: Mapping[str, list[str]] | None = None):
        """The listed pairs (a pandas DataFrame); ``names`` (split -> file of each index, as
        :func:`ssl_hpc.data.image_folder.image_folder_files` gives) adds the two files."""
        import pandas as pd

        columns = [
            "first",
            "first_index",
            "second",
            "second_index",
            "distance",
            "correlation",
            "first_label",
            "second_label",
        ]
        rows = [{name: getattr(pair, name) for name in columns} for pair in self.pairs]
        frame = pd.DataFrame(rows, columns=columns)
        if names is not None:
            frame["first_file"] = [names[p.first][p.first_index] for p in self.pairs]
            frame["second_file"] = [names[p.second][p.second_index] for p in self.pairs]
        return frame

    def summary(self) -> str:
        return ", ".join(
            f"{first}-{second}: {count.pairs} pairs ({count.second_images} {second} images)"
            for (first, second), count in self.counts.items()
        )

    def to_json(self) -> str:
        """The whole report as JSON (:meth:`from_json` reads it back equal), e.g. for the leakage cache."""
        return json.dumps(
            {
                "dataset": self.dataset,
                "threshold": self.threshold,
                "min_correlation": self.min_correlation,
                "counts": [[first, second, asdict(count)] for (first, second), count in self.counts.items()],
                "pairs": [asdict(pair) for pair in self.pairs],
                "pairs_truncated": self.pairs_truncated,
                "sizes": dict(self.sizes),
                "seconds": self.seconds,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> DuplicateReport:
        data = json.loads(text)
        return cls(
            dataset=data["dataset"],
            threshold=data["threshold"],
            min_correlation=data["min_correlation"],
            counts={(first, second): SplitPairCount(**count) for first, second, count in data["counts"]},
            pairs=tuple(DuplicatePair(**pair) for pair in data["pairs"]),
            pairs_truncated=data["pairs_truncated"],
            sizes=data["sizes"],
            seconds=data["seconds"],
        )
