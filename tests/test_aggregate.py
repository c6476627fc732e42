"""The aggregation step against a real MLflow store (SQLite in tmp_path) holding hand-made runs."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from ssl_hpc.cli import aggregate_main
from ssl_hpc.evaluate.fusion import EPS
from ssl_hpc.evaluate.metrics import classification_metrics
from ssl_hpc.tracking import FINISHED, SweepTracker

SWEEP = "agg"
K = 3
CLASS_NAMES = json.dumps(["alpha", "beta, with a comma", "gamma"])  # as the fine-tune stage writes the tag
N_TEST, N_VAL = 60, 45
SEED = 621
PRETRAIN_SECONDS = {"simclr": 3600.0, "mocov2": 7200.0}
FINETUNE_SECONDS = 360.0
FRACTIONS = {"1.0": 300, "0.25": 75}  # label budget -> n_labels
FUSIONS = {"ssl_pair": ["simclr", "mocov2"], "with_aim": ["simclr", "aim"]}
RULES = ["product", "vote", "stacking", "greedy"]


def probabilities(rng, labels, signal):
    logits = rng.normal(size=(len(labels), K)) + signal * np.eye(K)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probs[0, 0] = 0.0  # a hard zero: fusion rules must cope
    return probs / probs.sum(axis=1, keepdims=True)


def save_npz(path: Path, probs, labels, digest) -> Path:
    np.savez_compressed(path, probs=probs, labels=labels, indices=np.arange(len(labels)), split_digest=np.array(digest))
    return path


class Store:
    """Writes runs the way the fine-tune stage does: tags, metrics, histories, prediction artifacts."""

    def __init__(self, uri: str, folder: Path, sweep: str = SWEEP):
        self.sweep = sweep
        self.tracker = SweepTracker(uri, sweep)
        self.folder = folder
        rng = np.random.default_rng(0)
        self.test_labels = rng.integers(0, K, N_TEST)
        self.val_labels = rng.integers(0, K, N_VAL)
        self.count = 0
        self.probs: dict[tuple, np.ndarray] = {}

    def pretrain(self, method: str) -> str:
        key = f"pre{method}"
        run_id = self.tracker.create_run(
            f"{method}-pretrain",
            {"sweep": self.sweep, "key": key, "stage": "pretrain", "method": method, "device": "NVIDIA A100"},
            {},
        )
        self.tracker.log_metrics(run_id, {"train_seconds": PRETRAIN_SECONDS[method]})
        self.tracker.finish(run_id)
        return key

    def finetune(
        self,
        model: str,
        finetune: str,
        fraction: str,
        signal: float,
        test_digest: str = "TEST",
        status: str = FINISHED,
        device: str = "NVIDIA A100",
        seed: int = SEED,
    ) -> str:
        self.count += 1
        rng = np.random.default_rng(self.count)
        method = "supervised" if model == "supervised" else model
        tags = {
            "sweep": self.sweep,
            "key": f"k{self.count:03d}",
            "stage": "finetune",
            "method": method,
            "model": model,
            "backbone": "resnet18",
            "dataset": "bloodmnist",
            "size": "28",
            "label_fraction": fraction,
            "class_weight": "none",
            "finetune": finetune,
            "seed": str(seed),
            "n_labels": str(FRACTIONS[fraction]),
            "class_names": CLASS_NAMES,
            "device": device,
        }
        if method != "supervised":
            tags["pretrain_key"] = f"pre{method}"
        run_id = self.tracker.create_run(f"{model}-{finetune}-{fraction}", tags, {})
        test_probs = probabilities(rng, self.test_labels, signal)
        val_probs = probabilities(rng, self.val_labels, signal)
        metrics = classification_metrics(self.test_labels, test_probs)
        metrics.update({"best_epoch": 2.0, "train_seconds": FINETUNE_SECONDS})
        self.tracker.log_metrics(run_id, metrics)
        for epoch in range(3):
            self.tracker.log_metrics(run_id, {"val_acc": 0.3 + 0.1 * epoch + 0.01 * self.count}, step=epoch)
        folder = self.folder / self.sweep / run_id
        folder.mkdir(parents=True)
        self.tracker.log_artifact(
            run_id, save_npz(folder / "test_probs.npz", test_probs, self.test_labels, test_digest)
        )
        self.tracker.log_artifact(run_id, save_npz(folder / "val_probs.npz", val_probs, self.val_labels, "VAL"))
        self.tracker.finish(run_id, status)
        self.probs[(model, finetune, fraction) + ((seed,) if seed != SEED else ())] = test_probs
        return run_id


def populate(store: Store, mismatched: bool = False, fractions=tuple(FRACTIONS)) -> None:
    store.pretrain("simclr")
    store.pretrain("mocov2")
    for fraction in fractions:
        store.finetune("supervised", "end_to_end", fraction, 1.2)
        for mode in ("frozen", "end_to_end"):
            store.finetune("simclr", mode, fraction, 1.0)
            digest = "SHUFFLED" if mismatched and mode == "frozen" and fraction == "1.0" else "TEST"
            store.finetune("mocov2", mode, fraction, 0.8, test_digest=digest)
    store.finetune("simclr", "knn", "1.0", 0.5, status="FAILED")  # not FINISHED: never collected


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """One real SQLite store for the module (creating one costs seconds): a sweep per scenario."""
    folder = tmp_path_factory.mktemp("aggregate")
    uri = f"sqlite:///{folder / 'store' / 'mlflow.db'}"
    normal = Store(uri, folder / "made")
    populate(normal)
    mismatched = Store(uri, folder / "made", sweep="agg_mismatch")
    populate(mismatched, mismatched=True, fractions=("1.0",))
    seeds = Store(uri, folder / "made", sweep="agg_seeds")
    for seed in (1, 2, 3):
        seeds.finetune("supervised", "end_to_end", "1.0", 1.0, seed=seed, device="cpu")
        seeds.finetune("simclr", "frozen", "1.0", 1.0 + 0.5 * seed, seed=seed, device="cpu")
        seeds.finetune("mocov2", "frozen", "1.0", 1.0, seed=seed, device="cpu")
    failed_only = Store(uri, folder / "made", sweep="agg_failed")
    failed_only.finetune("supervised", "end_to_end", "1.0", 1.0, status="FAILED")
    return {"uri": uri, "normal": normal, "mismatched": mismatched, "seeds": seeds}


@pytest.fixture
def project(tmp_path, monkeypatch, stores):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stores["uri"])
    root = tmp_path / "project"
    root.mkdir()
    # Every fusion member must be a model of the sweep; aim and mae never ran (their fusions are skipped).
    sweep = {
        "name": SWEEP,
        "grid": {
            "dataset": ["bloodmnist"],
            "method": ["supervised", "simclr", "mocov2", "aim", "mae"],
            "finetune": ["frozen", "end_to_end"],
        },
        "methods": {"aim": {"backbone": ["vit_mini"]}, "mae": {"backbone": ["vit_mini"]}},
        "aggregate": {"fusions": FUSIONS, "rules": RULES, "bootstrap_resamples": 200},
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return {"root": root, "uri": stores["uri"], "sweep": path, "store": stores["normal"], "stores": stores}


def column_of(tags: dict) -> str:
    return tags["model"] if tags["method"] == "supervised" else f"{tags['model']}/{tags['finetune']}"


def aggregate_runs(client: MlflowClient, experiment_id: str):
    return client.search_runs([experiment_id], "tags.stage = 'aggregate'")


def test_tables_fusions_metrics_and_rerun(project, capsys):
    store: Store = project["store"]
    root = project["root"]
    assert aggregate_main([str(project["sweep"])], project_root=root) == 0
    output = capsys.readouterr()
    results = root / "results" / SWEEP

    # --- tables: layout, every single-model cell equals its run's metric x 100
    client = MlflowClient(project["uri"])
    experiment = client.get_experiment_by_name(SWEEP)
    runs = client.search_runs([experiment.experiment_id], "tags.stage = 'finetune' and attributes.status = 'FINISHED'")
    assert len(runs) == 10
    for fraction in FRACTIONS:
        table = pd.read_csv(results / f"table_bloodmnist_{fraction}.csv")
        assert table.columns[0] == "row"
        assert table["row"].tolist() == ["class_0", "class_1", "class_2", "accuracy", "mean_class_accuracy"]
        table = table.set_index("row")
        # the reference first, then the models in the sweep's order, end-to-end before frozen
        singles = ["supervised", "simclr/end_to_end", "simclr/frozen", "mocov2/end_to_end", "mocov2/frozen"]
        fusions = [f"ssl_pair:{rule}/{mode}" for rule in RULES for mode in ("end_to_end", "frozen")]
        assert list(table.columns) == singles + fusions
        for run in runs:
            if run.data.tags["label_fraction"] != fraction:
                continue
            column = table[column_of(run.data.tags)]
            for i in range(K):
                assert column[f"class_{i}"] == pytest.approx(100 * run.data.metrics[f"test_acc_class_{i}"], rel=1e-9)
            assert column["accuracy"] == pytest.approx(100 * run.data.metrics["test_acc"], rel=1e-9)
        for name in table.columns:
            assert table.loc["mean_class_accuracy", name] == pytest.approx(table[name].iloc[:K].mean())
        for suffix in (".md", ".tex", "_std.csv"):
            assert (results / f"table_bloodmnist_{fraction}{suffix}").is_file()
        assert "class_1 (beta, with a comma)" in (results / f"table_bloodmnist_{fraction}.md").read_text()
        # product fusion recomputed here: argmax of summed log-probabilities
        for mode in ("frozen", "end_to_end"):
            logs = sum(np.log(np.clip(store.probs[(m, mode, fraction)], EPS, 1)) for m in ("simclr", "mocov2"))
            expected = 100 * (logs.argmax(axis=1) == store.test_labels).mean()
            assert table.loc["accuracy", f"ssl_pair:product/{mode}"] == pytest.approx(expected)

    # --- a fusion with a member that never ran is skipped and said so, never fused partially
    skipped = pd.read_csv(results / "skipped.csv")
    assert set(skipped["column"].str.split(":").str[0]) == {"with_aim"}
    assert skipped["reason"].str.contains("aim have no FINISHED run").all()
    assert "skipped fusion with_aim" in output.err

    # --- summary: GPU-hours include an equal share of the pretraining run (4 fine-tune runs use each)
    summary = pd.read_csv(results / "summary.csv", dtype={"label_fraction": str})
    row = summary[(summary["model"] == "mocov2/frozen") & (summary["label_fraction"] == "0.25")].iloc[0]
    assert row["gpu_hours"] == pytest.approx((FINETUNE_SECONDS + PRETRAIN_SECONDS["mocov2"] / 4) / 3600)
    assert row["n_labels"] == 75
    fusion = summary[(summary["model"] == "ssl_pair:product/frozen") & (summary["label_fraction"] == "0.25")].iloc[0]
    assert fusion["gpu_hours"] == pytest.approx(
        (2 * FINETUNE_SECONDS + PRETRAIN_SECONDS["mocov2"] / 4 + PRETRAIN_SECONDS["simclr"] / 4) / 3600
    )
    for metric in ("auc", "f1_macro", "kappa", "accuracy_ci_low", "accuracy_ci_high", "p_value"):
        assert metric in summary.columns
    reference_rows = summary[summary["kind"] == "reference"]
    assert reference_rows["p_value"].isna().all()
    others = summary[summary["kind"] != "reference"]
    assert others["paired_test"].str.startswith("mcnemar").all() and others["p_value"].between(0, 1).all()
    assert (summary["accuracy_ci_low"] <= summary["accuracy"]).all()
    assert (summary["accuracy"] <= summary["accuracy_ci_high"]).all()
    assert (summary["interval_covers"] == "test examples only").all()  # one seed: said plainly
    assert "do NOT cover training noise" in next(results.glob("table_*.md")).read_text()
    assert len(pd.read_csv(results / "paired_tests.csv")) == len(others)

    # --- plots
    for name in (
        "per_class_bloodmnist_1.0.png",
        "val_curves_bloodmnist_1.0.png",
        "confusion_bloodmnist_0.25.png",
        "accuracy_vs_labels_bloodmnist.png",
    ):
        assert (results / name).stat().st_size > 1000

    # --- the aggregate MLflow run: artifacts, fusion metrics named like the runs' metrics
    (aggregate,) = aggregate_runs(client, experiment.experiment_id)
    assert aggregate.info.status == FINISHED
    assert aggregate.data.tags["key"] == "aggregate" and aggregate.data.tags["sweep"] == SWEEP
    metrics = aggregate.data.metrics
    table = pd.read_csv(results / "table_bloodmnist_1.0.csv", index_col="row")
    for rule in RULES:
        name = f"bloodmnist_1.0/ssl_pair:{rule}/frozen/seed{SEED}/test_acc"
        assert 100 * metrics[name] == pytest.approx(table.loc["accuracy", f"ssl_pair:{rule}/frozen"])
        assert f"bloodmnist_1.0/ssl_pair:{rule}/frozen/seed{SEED}/test_balanced_acc" in metrics
    logged = {entry.path for entry in client.list_artifacts(aggregate.info.run_id)}
    assert {"table_bloodmnist_1.0.csv", "summary.csv", "per_class_bloodmnist_1.0.png"} <= logged
    details = json.loads((results / "fusions.json").read_text())
    weights = details["table_bloodmnist_1.0"]["ssl_pair:greedy/frozen"][str(SEED)]["weights"]
    assert sum(weights.values()) == pytest.approx(1.0)

    # --- re-running replaces its own outputs, keeps what a user put beside them, and reuses the aggregate run
    (results / "my_notes.txt").write_text("a user's notes")
    assert (
        aggregate_main(
            [str(project["sweep"]), "--set", "aggregate.rules=[mean]", "--set", "aggregate.plots=false"],
            project_root=root,
        )
        == 0
    )
    (again,) = aggregate_runs(client, experiment.experiment_id)
    assert again.info.run_id == aggregate.info.run_id and again.info.status == FINISHED
    assert (results / "my_notes.txt").read_text() == "a user's notes"
    assert not list(results.glob("*.png"))  # the plots of the first run, not made this time, are gone
    table = pd.read_csv(results / "table_bloodmnist_1.0.csv", index_col="row")
    assert "ssl_pair:mean/frozen" in table.columns and "ssl_pair:product/frozen" not in table.columns
    assert sorted(p.name for p in root.joinpath("results").iterdir()) == [f".{SWEEP}.lock", SWEEP]
    logged = {entry.path for entry in client.list_artifacts(aggregate.info.run_id)}
    assert "my_notes.txt" not in logged and "table_bloodmnist_1.0.csv" in logged


def test_a_results_folder_the_aggregation_did_not_write_is_refused_untouched(project, capsys):
    root = project["root"]
    foreign = root / "results" / SWEEP
    foreign.mkdir(parents=True)
    (foreign / "thesis_draft.tex").write_text("months of work")
    assert aggregate_main([str(project["sweep"]), "--set", "aggregate.plots=false"], project_root=root) != 0
    assert "did not write" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["thesis_draft.tex"]
    assert (foreign / "thesis_draft.tex").read_text() == "months of work"


def test_mismatched_split_digest_makes_the_fusion_refuse(project, capsys):
    root = project["root"]
    sweep = str(project["sweep"])
    fusions = "aggregate.fusions={ssl_pair: [simclr, mocov2], vit: [aim, mae]}"
    assert (
        aggregate_main(
            [
                sweep,
                "--set",
                "name=agg_mismatch",
                "--set",
                fusions,
                "--set",
                "aggregate.rules=[product]",
                "--set",
                "aggregate.plots=false",
            ],
            project_root=root,
        )
        == 0
    )
    err = capsys.readouterr().err
    results = root / "results" / "agg_mismatch"
    full = pd.read_csv(results / "table_bloodmnist_1.0.csv", index_col="row")
    assert "ssl_pair:product/frozen" not in full.columns  # refused, not fused
    assert "ssl_pair:product/end_to_end" in full.columns  # the aligned group is still fused
    skipped = pd.read_csv(results / "skipped.csv")
    assert skipped["column"].tolist() == ["ssl_pair:product/frozen", "vit:*"]
    assert (skipped["table"] == "table_bloodmnist_1.0").all()
    assert "refused" in skipped.loc[0, "reason"] and "split_digest" in skipped.loc[0, "reason"]
    assert "none of its members (aim, mae)" in skipped.loc[1, "reason"]  # a fusion that made nothing is said too
    assert "split_digest" in err
    assert "split_digest" in (results / "notes.md").read_text()
    # the single-model column of the mismatched run is still there, with its own metrics
    assert not math.isnan(full.loc["accuracy", "mocov2/frozen"])


def test_several_seeds_mean_std_seed_interval_and_holm(project):
    root = project["root"]
    assert (
        aggregate_main(
            [
                str(project["sweep"]),
                "--set",
                "name=agg_seeds",
                "--set",
                "aggregate.rules=[product]",
                "--set",
                "aggregate.plots=false",
            ],
            project_root=root,
        )
        == 0
    )
    results = root / "results" / "agg_seeds"
    table = pd.read_csv(results / "table_bloodmnist_1.0.csv", index_col="row")
    std = pd.read_csv(results / "table_bloodmnist_1.0_std.csv", index_col="row")
    assert list(table.columns) == ["supervised", "simclr/frozen", "mocov2/frozen", "ssl_pair:product/frozen"]
    client = MlflowClient(project["uri"])
    experiment = client.get_experiment_by_name("agg_seeds")
    runs = client.search_runs([experiment.experiment_id], "tags.model = 'simclr'")
    accuracies = [100 * run.data.metrics["test_acc"] for run in runs]
    assert len(accuracies) == 3
    assert table.loc["accuracy", "simclr/frozen"] == pytest.approx(np.mean(accuracies))
    assert std.loc["accuracy", "simclr/frozen"] == pytest.approx(np.std(accuracies, ddof=1))
    for name in table.columns:
        assert table.loc["mean_class_accuracy", name] == pytest.approx(table[name].iloc[:K].mean())
    summary = pd.read_csv(results / "summary.csv")
    assert (summary["n_seeds"] == 3).all()
    compared = summary[summary["kind"] != "reference"]
    assert (compared["paired_test"] == "paired_t_over_seeds").all()  # a test across seeds, paired by seed
    assert (compared["p_holm"] >= compared["p_value"]).all() and compared["p_holm"].notna().all()
    assert (summary["interval_covers"] == "seeds and test examples").all()
    assert len(pd.read_csv(results / "paired_tests.csv")) == 3 * 3  # McNemar per seed for each non-reference
    assert summary["cpu_hours"].tolist()[:3] == pytest.approx([FINETUNE_SECONDS / 3600] * 3)
    assert (summary["gpu_hours"] == 0).all()
    (aggregate,) = aggregate_runs(client, experiment.experiment_id)
    for seed in (1, 2, 3):
        assert f"bloodmnist_1.0/ssl_pair:product/frozen/seed{seed}/test_acc" in aggregate.data.metrics
    markdown = (results / "table_bloodmnist_1.0.md").read_text()
    assert re.search(r"\| accuracy \| \d+\.\d\d ± \d+\.\d\d \|", markdown)


def test_no_finished_runs_exits_nonzero_with_a_message(project, capsys):
    root, sweep = project["root"], str(project["sweep"])
    assert aggregate_main([sweep, "--set", "name=never_ran"], project_root=root) == 1
    assert "no MLflow experiment 'never_ran'" in capsys.readouterr().err
    assert aggregate_main([sweep, "--set", "name=agg_failed"], project_root=root) == 1
    assert "no FINISHED fine-tune runs" in capsys.readouterr().err
    assert not (root / "results" / "agg_failed").exists()
    client = MlflowClient(project["uri"])
    assert not aggregate_runs(client, client.get_experiment_by_name("agg_failed").experiment_id)


def test_bad_aggregate_settings_are_refused_naming_the_field(project, capsys):
    root, sweep = project["root"], str(project["sweep"])
    assert aggregate_main([sweep, "--set", "aggregate.rules=[product, median]"], project_root=root) == 2
    error = capsys.readouterr().err
    assert "aggregate.rules" in error and "accepted: greedy, max_confidence, mean, product, stacking, vote" in error
    assert aggregate_main([sweep, "--set", "aggregate.fusions={solo: [simclr]}"], project_root=root) == 2
    assert "aggregate.fusions.solo" in capsys.readouterr().err


def record(model: str, backbone: str = "resnet18", finetune: str = "frozen", seed: int = SEED):
    from ssl_hpc.aggregate import RunRecord

    return RunRecord(
        run_id=f"{model}-{backbone}",
        key="k",
        model=model,
        method=model.split("_")[0],
        backbone=backbone,
        dataset="bloodmnist",
        size="28",
        label_fraction="1.0",
        class_weight="none",
        finetune=finetune,
        seed=seed,
        metrics={},
        class_names=[],
        n_labels=10,
        device="cpu",
        pretrain_key=None,
        end_time=0,
    )


def test_members_resolve_per_backbone_and_missing_members_are_problems():
    from ssl_hpc.aggregate import resolve_members

    plain = [record("simclr"), record("mocov2")]
    assert [(b, [r.run_id for r in runs], p) for b, runs, p in resolve_members(["simclr", "mocov2"], plain)] == [
        ("", ["simclr-resnet18", "mocov2-resnet18"], "")
    ]
    # a method given two backbones is tagged simclr_resnet18 / simclr_resnet34: one fusion per backbone
    two = [
        record("simclr_resnet18"),
        record("simclr_resnet34", "resnet34"),
        record("mocov2_resnet18"),
        record("mocov2_resnet34", "resnet34"),
    ]
    resolved = list(resolve_members(["simclr", "mocov2"], two))
    assert [(b, [r.run_id for r in runs], p) for b, runs, p in resolved] == [
        ("resnet18", ["simclr_resnet18-resnet18", "mocov2_resnet18-resnet18"], ""),
        ("resnet34", ["simclr_resnet34-resnet34", "mocov2_resnet34-resnet34"], ""),
    ]
    # a member with one backbone (a ViT method) joins each backbone's fusion
    mixed = [*two[:2], record("mae", "vit_tiny")]
    assert [[r.model for r in runs] for _, runs, _ in resolve_members(["simclr", "mae"], mixed)] == [
        ["simclr_resnet18", "mae"],
        ["simclr_resnet34", "mae"],
    ]
    # partial sets are never fused
    ((_, runs, problem),) = resolve_members(["simclr", "aim"], plain)
    assert not runs and "aim" in problem
    partial = list(resolve_members(["simclr", "mocov2"], [*two[:2], two[2]]))
    assert partial[0][2] == "" and "mocov2" in partial[1][2] and "resnet34" in partial[1][2]
