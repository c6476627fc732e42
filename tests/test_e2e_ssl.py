"""sweeps/smoke_ssl.yaml end to end on real PneumoniaMNIST: pretraining, fine-tuning, re-run.

The sweep runs once per session (it is the most expensive test); the tests below read its
MLflow store. The aggregation and CAM checks of the same outputs live here too, so CI pays for
the sweep once. It runs on a stratified quarter of the real PneumoniaMNIST (``subset_root``)
with one of the sweep's two label fractions (25 %): 5 pretraining and 10 fine-tune runs; the second
fraction would only repeat the same code on four times the examples (two label fractions end to end are
the smoke sweep's test, on the whole dataset).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import run_sweep_cli

pytestmark = pytest.mark.e2e
METHODS = {"simclr", "mocov2", "aim", "mae", "rotnet"}
FRACTION = "0.25"
FINETUNES = len(METHODS) * 2  # x frozen, end to end


class SmokeSSL:
    def __init__(self, root: Path, data: Path):
        self.root = root
        self.tracking_uri = f"sqlite:///{root / 'store' / 'mlflow.db'}"
        self.outputs = root / "outputs"
        self.env = {"MEDMNIST_ROOT": str(data), "MLFLOW_TRACKING_URI": self.tracking_uri}
        self.results = root / "results"
        self.args = [
            "sweeps/smoke_ssl.yaml",
            "--set",
            f"output_dir={self.outputs}",
            "--set",
            f"results_dir={self.results}",
            "--set",
            f"grid.label_fraction=[{FRACTION}]",
        ]

    def run(self):
        return run_sweep_cli(self.args, self.env, timeout=2400)

    def runs(self, stage: str | None = None):
        client = MlflowClient(self.tracking_uri)
        experiment = client.get_experiment_by_name("smoke_ssl")
        query = f"tags.stage = '{stage}'" if stage else ""
        return client, client.search_runs([experiment.experiment_id], query, max_results=1000)


@pytest.fixture(scope="module")
def smoke_ssl(tmp_path_factory, subset_root) -> SmokeSSL:
    sweep = SmokeSSL(tmp_path_factory.mktemp("smoke_ssl"), subset_root)
    result = sweep.run()
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    sweep.first_output = result.stdout
    return sweep


def test_one_pretraining_run_per_method(smoke_ssl):
    client, runs = smoke_ssl.runs("pretrain")
    assert len(runs) == 5
    assert {run.data.tags["method"] for run in runs} == METHODS
    for run in runs:
        assert run.info.status == "FINISHED"
        assert "backbone.pt" in {a.path for a in client.list_artifacts(run.info.run_id)}
        assert 0.0 <= run.data.metrics["knn_val_acc"] <= 1.0
        assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [0]


def test_every_finetune_run_finished_on_its_own_pretraining(smoke_ssl):
    client, pretrain = smoke_ssl.runs("pretrain")
    _, finetune = smoke_ssl.runs("finetune")
    assert len(finetune) == FINETUNES
    pretrain_by_key = {run.data.tags["key"]: run for run in pretrain}
    combos = set()
    for run in finetune:
        tags, metrics = run.data.tags, run.data.metrics
        assert run.info.status == "FINISHED"
        for name in ("test_acc", "test_balanced_acc", "test_auc", "test_f1_macro", "test_acc_class_0"):
            assert name in metrics
        parent = pretrain_by_key[tags["pretrain_key"]]
        assert parent.data.tags["method"] == tags["method"]
        assert tags["pretrain_run_id"] == parent.info.run_id
        assert run.info.start_time >= parent.info.end_time  # never before its pretraining ended
        combos.add((tags["method"], tags["finetune"], tags["label_fraction"]))
    assert len(combos) == FINETUNES
    assert {fraction for _, _, fraction in combos} == {FRACTION}


def test_rerunning_the_sweep_trains_nothing(smoke_ssl):
    _, before = smoke_ssl.runs()
    result = smoke_ssl.run()
    assert result.returncode == 0
    assert f"{len(METHODS) + FINETUNES} skipped" in result.stdout
    _, after = smoke_ssl.runs()
    assert {run.info.run_id for run in after} == {run.info.run_id for run in before}


def test_every_finetune_run_has_cam_figures_and_scores(smoke_ssl):
    client, finetune = smoke_ssl.runs("finetune")
    for run in finetune:
        cams = {item.path for item in client.list_artifacts(run.info.run_id, "cam")}
        assert any(path.startswith("cam/cam_class") and path.endswith(".png") for path in cams), cams
        assert "cam/confidence_histograms.png" in cams
        assert any(name.startswith("cam_gradcampp_road") for name in run.data.metrics), run.data.metrics.keys()
        # how far to trust the maps: logged on every run (Grad-CAM++ is the default method)
        assert "cam_gradcampp_blank_fraction" in run.data.metrics
        assert "cam_gradcampp_randomization_spearman" in run.data.metrics


def test_the_sweep_ends_with_tables_whose_cells_are_the_runs_metrics(smoke_ssl):
    import pandas as pd
    import yaml

    fusions = yaml.safe_load(open("sweeps/smoke_ssl.yaml"))["aggregate"]["fusions"]
    client, finetune = smoke_ssl.runs("finetune")
    by_id = {run.info.run_id: run for run in finetune}
    folder = smoke_ssl.results / "smoke_ssl"
    runs_csv = pd.read_csv(folder / "runs.csv")
    table = pd.read_csv(folder / f"table_pneumoniamnist_{FRACTION}.csv", index_col="row")
    assert list(table.index) == ["class_0", "class_1", "accuracy", "mean_class_accuracy"]
    for column in table.columns:
        assert table.loc["mean_class_accuracy", column] == pytest.approx(
            table.loc[["class_0", "class_1"], column].mean(), abs=0.011
        )
    for fusion in fusions:
        assert any(column.startswith(f"{fusion}:") for column in table.columns), (fusion, list(table.columns))
    singles = runs_csv[
        runs_csv["table"].astype(str).str.endswith(FRACTION) & ~runs_csv["column"].astype(str).str.contains(":")
    ]  # fusions have a rule after ':'
    checked = 0
    for _, row in singles.iterrows():
        assert row["column"] in table.columns and row["run_id"] in by_id
        metrics = by_id[row["run_id"]].data.metrics
        assert table.loc["accuracy", row["column"]] == pytest.approx(100 * metrics["test_acc"], abs=0.006)
        assert table.loc["class_1", row["column"]] == pytest.approx(100 * metrics["test_acc_class_1"], abs=0.006)
        checked += 1
    assert checked == FINETUNES  # 5 methods x 2 fine-tune modes
    _, aggregate = smoke_ssl.runs("aggregate")
    assert len(aggregate) == 1
