"""Every sweep shipped in sweeps/ validates and expands to the jobs it promises."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssl_hpc.cli import sweep_main
from ssl_hpc.config import load_sweep
from ssl_hpc.jobs import expand_jobs

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"


@pytest.mark.parametrize(
    "name,pretrain,finetune",
    [
        ("smoke", 0, 4),
        ("smoke_ssl", 5, 20),
        ("full_grid", 10, 44),  # 2 datasets x (5 SSL models pretrained; 5 x 2 budgets x 2 modes + reference x 2)
        ("transfer_pneumonia", 0, 4),  # ResNet-50 and the CNN, 5 and 15 epochs
        ("covid_radiography", 0, 12),  # 4 networks x COVID weight 1..3
        ("saliency_guidance", 0, 7),  # CE and six guided variants of one ImageNet ResNet-50
        ("rotation_mnist", 3, 6),  # RotNet per seed, its frozen fine-tune and the small CNN from scratch
    ],
)
def test_sweep_validates_and_dry_runs(name, pretrain, finetune, capsys, tmp_path):
    jobs = expand_jobs(load_sweep(SWEEPS / f"{name}.yaml"))
    assert sum(job.stage == "pretrain" for job in jobs) == pretrain
    assert sum(job.stage == "finetune" for job in jobs) == finetune
    assert sweep_main([str(SWEEPS / f"{name}.yaml"), "--dry-run"], project_root=tmp_path) == 0
    assert f"{pretrain + finetune} jobs: {pretrain} pretrain, {finetune} finetune" in capsys.readouterr().out


def test_full_grid_is_the_thesis_grid():
    sweep = load_sweep(SWEEPS / "full_grid.yaml")
    jobs = expand_jobs(sweep)
    finetune = [job for job in jobs if job.stage == "finetune"]
    assert {job.config.dataset for job in jobs} == {"bloodmnist", "dermamnist"}
    assert {job.config.size for job in jobs} == {28}
    assert {job.model_name for job in finetune} == {"supervised", "simclr", "mocov2", "aim", "mae", "mocov2_r34"}
    assert {job.config.label_fraction for job in finetune} == {1.0, 0.25}
    assert {job.config.finetune for job in finetune if job.config.method != "supervised"} == {"frozen", "end_to_end"}
    assert {job.config.seed for job in jobs} == {621}
    assert all(
        job.config.finetune_settings.epochs == 100 and job.config.finetune_settings.batch_size == 128
        for job in finetune
    )
    pretrain = {job.model_name: job.config for job in jobs if job.stage == "pretrain"}
    assert pretrain["mae"].model.input_size == 224 and pretrain["mae"].backbone == "vit_base"
    assert pretrain["aim"].model.vit_patch_size == 4
    assert pretrain["mocov2_r34"].backbone == "resnet34"
    assert pretrain["simclr"].pretrain_settings.lr == 0.06 and pretrain["mae"].pretrain_settings.optimizer == "adamw"
    assert set(sweep.aggregate.fusions) == {"simclr_mocov2", "aim_mae", "all_four"}


def test_saliency_guidance_sweep_compares_ce_with_each_guided_loss():
    """The saliency report's arms: CE against product, division and its three k weightings, one model."""
    jobs = expand_jobs(load_sweep(SWEEPS / "saliency_guidance.yaml"))
    guidance = {job.model_name: job.config.finetune_settings.guidance for job in jobs}
    assert guidance["ce"] is None
    assert {g.loss for name, g in guidance.items() if g is not None} == {"product", "division", "weighted_sum"}
    weights = {(g.k1, g.k2, g.k3) for g in guidance.values() if g is not None and g.loss == "weighted_sum"}
    assert {(0.33, 0.33, 0.34), (0.05, 0.05, 0.9), (0.05, 0.0, 0.95)} <= weights
    assert {job.config.backbone for job in jobs} == {"resnet50"} and {job.config.method for job in jobs} == {"imagenet"}
    assert {g.map for g in guidance.values() if g is not None} == {"gradcam", "faster_scorecam"}
