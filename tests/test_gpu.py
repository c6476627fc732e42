"""The CUDA code paths (`pytest -m gpu`; bench/gpu_check.py runs them first on a machine with a GPU).

bf16 autocast, channels_last, kornia views on the device, `runtime.compile`, CAMs on CUDA and packing
several runs on one GPU are written for our users' nodes; these tests are where they first execute.
Without CUDA they skip, saying so.
"""

from __future__ import annotations

import pytest
import torch
from mlflow import MlflowClient

from conftest import PROJECT_ROOT, require_real_data, run_sweep_cli

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: run bench/gpu_check.py on one"),
]


def smoke_on_cuda(tmp_path, *sets: str) -> list:
    """sweeps/smoke.yaml on the GPU (one epoch, a quarter of the labels); its runs."""
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["sweeps/smoke.yaml", "--quiet"]
    for value in (
        f"output_dir={tmp_path / 'outputs'}",
        f"results_dir={tmp_path / 'results'}",
        "runtime.device=cuda",
        "grid.label_fraction=[0.25]",
        "finetune.epochs=1",
        *sets,
    ):
        args += ["--set", value]
    result = run_sweep_cli(args, {"MEDMNIST_ROOT": str(require_real_data()), "MLFLOW_TRACKING_URI": tracking})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(tracking)
    return client.search_runs([client.get_experiment_by_name("smoke").experiment_id])


def test_gpu_training_loop_with_bf16_channels_last_and_cams(tmp_path):
    runs = smoke_on_cuda(tmp_path, "runtime.bf16=true", "runtime.channels_last=true")
    assert runs
    for run in runs:
        assert run.info.status == "FINISHED", run.data.tags.get("error")
        assert run.data.tags["device"] == torch.cuda.get_device_name(0)
        assert 0.0 <= run.data.metrics["test_acc"] <= 1.0
        assert any(name.startswith("cam_") for name in run.data.metrics)  # CAMs computed on the device


def test_gpu_compiled_model_trains(tmp_path):
    runs = smoke_on_cuda(tmp_path, "runtime.compile=true", "cam.enabled=false")
    assert runs and all(run.info.status == "FINISHED" for run in runs)


def test_gpu_packed_runs_share_one_gpu(tmp_path):
    """Two runs side by side in one allocation (`pack: 2`), each in its own process on the same GPU."""
    from ssl_hpc.config import load_sweep
    from ssl_hpc.jobs import expand_jobs
    from ssl_hpc.launchers.slurm.node import SlurmTask
    from ssl_hpc.train.handle import RunContext

    sweep = load_sweep(PROJECT_ROOT / "sweeps" / "smoke.yaml")
    jobs = [job for job in expand_jobs(sweep) if job.config.finetune == "frozen"][:2]
    assert len(jobs) == 2
    runtime = sweep.runtime.model_copy(update={"device": "cuda"})
    context = RunContext(
        sweep_name="gpu_pack",
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        output_root=tmp_path / "outputs",
        data_root=require_real_data(),
        runtime=runtime,
        datasets=sweep.datasets,
        cam=sweep.cam.model_copy(update={"enabled": False}),
    )
    assert set(SlurmTask()(jobs, context, cpus=2).values()) == {"finished"}


def test_gpu_ssl_views_and_step_on_the_device():
    """kornia makes both SimCLR views on the GPU; a bf16 step gives a finite loss and gradients there."""
    from ssl_hpc.config import PretrainSettings
    from ssl_hpc.data.augment import view_augmentation
    from ssl_hpc.models.backbones import BackboneRequest
    from ssl_hpc.models.classifier import Preprocess
    from ssl_hpc.models.methods import METHODS
    from ssl_hpc.train.pretrain import PretextTask

    device = torch.device("cuda")
    model = METHODS["simclr"].build_pretext("resnet18", BackboneRequest(3, 28, stem="imagenet"), PretrainSettings())
    model = model.to(device).to(memory_format=torch.channels_last)
    preprocess = Preprocess(3, 3, model.backbone.info.mean, model.backbone.info.std).to(device)
    task = PretextTask(model, preprocess, view_augmentation("contrastive", 28, 3), views=2)
    images = torch.randint(0, 256, (64, 3, 28, 28), dtype=torch.uint8, device=device)
    views = task.make_views(images)
    assert all(view.device.type == "cuda" for view in views)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model.loss(views)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None or p.grad.device.type == "cuda" for p in model.parameters())
