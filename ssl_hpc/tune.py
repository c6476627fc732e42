"""A hyperparameter search with Ray Tune (``python launch/tune.py SWEEP.yaml [--set dotted.key=value ...]``).

The sweep's ``tune:`` section holds the search space (dotted sweep fields -> a distribution), the metric
and mode, the number of trials and the ASHA scheduler::

    tune:
      metric: val_acc
      mode: max
      num_samples: 4
      max_concurrent: 2
      space:
        finetune.lr: {loguniform: [1.0e-4, 1.0e-1]}
        finetune.optimizer: {choice: [sgd, adamw]}
      scheduler:
        asha: {grace_period: 1, max_t: 3, reduction_factor: 2}

Every trial applies its sampled values to the sweep as ``--set`` overrides would, so it is an ordinary
job of that sweep: its key, tags and MLflow conventions are the sweep command's, it runs through
:func:`ssl_hpc.runner.run_job` (skip if FINISHED, resume from a checkpoint), and each epoch's metrics
are reported to Tune after MLflow has them (ASHA needs intermediate results, so a trial checkpoints
every epoch whatever ``runtime.checkpoint_every_s`` says; the last epoch is reported
once the run is FINISHED, so ``max_t`` -- by default the fine-tune epochs -- never cuts the test
evaluation short). The sweep's grid must give
one fine-tune job per trial (plus its pretraining job, if the method has one). A trial ASHA stops early
ends as a KILLED MLflow run tagged ``tune_stopped=early`` (it has no test metrics); trials that run to
``max_t`` are FINISHED with their test metrics. Runs are tagged ``tune_trial_id``, ``tune_experiment``.
Ray runs as for ``--backend ray`` (the sweep's ``ray:`` section; a private local instance by default).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from ssl_hpc.config import ConfigError, SweepConfig, apply_overrides, validate_sweep
from ssl_hpc.config.cluster import Distribution, TuneSettings
from ssl_hpc.jobs import Job, expand_jobs, order_jobs
from ssl_hpc.runner import run_job, run_job_when_free
from ssl_hpc.tracking import KILLED, RUNNING, SweepTracker
from ssl_hpc.train.handle import RunContext

log = logging.getLogger("ssl_hpc.tune")


def trial_overrides(values: dict[str, Any]) -> list[str]:
    """Sampled values as ``dotted.key=value`` overrides (JSON is YAML, so types survive)."""
    return [f"{key}={json.dumps(value)}" for key, value in sorted(values.items())]


def trial_sweep(raw: dict[str, Any], values: dict[str, Any], source: str = "sweep") -> SweepConfig:
    return validate_sweep(apply_overrides(raw, trial_overrides(values)), source=source)


def trial_jobs(sweep: SweepConfig) -> tuple[list[Job], Job]:
    """The jobs of one trial (its pretraining job first, if any) and the fine-tune job reported to Tune."""
    jobs = order_jobs(expand_jobs(sweep))
    finetune = [job for job in jobs if job.stage == "finetune"]
    if len(finetune) != 1:
        raise ConfigError(
            f"grid: a tune sweep must give one fine-tune job per trial, this one gives {len(finetune)}; "
            f"give every grid axis a single value (the search space varies the rest)"
        )
    needed = {finetune[0].key, *finetune[0].depends_on}
    return [job for job in jobs if job.key in needed], finetune[0]


def probe_values(settings: TuneSettings) -> dict[str, Any]:
    """One value from every distribution of the search space: enough to build a trial's jobs."""
    return {key: _probe(distribution) for key, distribution in settings.space.items()}


def _probe(distribution: Distribution) -> Any:
    """A value the distribution can produce, to validate the space before anything runs."""
    kind = distribution.kind
    value = getattr(distribution, kind)
    return value[0] if kind != "choice" else value[0]


def validate_space(raw: dict[str, Any], settings: TuneSettings, source: str) -> None:
    """Each dimension must be a field of the sweep that accepts its values; refused naming ``tune.space.<key>``."""
    for key, distribution in settings.space.items():
        probes = (
            distribution.choice if distribution.kind == "choice" else list(getattr(distribution, distribution.kind))
        )
        for probe in probes:
            try:
                trial_sweep(raw, {key: probe}, source)
            except ConfigError as error:
                raise ConfigError(f"{source}: tune.space.{key}: value {probe!r} is refused: {error}") from None
    trial_jobs(trial_sweep(raw, probe_values(settings), source))


def search_space(settings: TuneSettings) -> dict[str, Any]:
    from ray import tune

    space = {}
    for key, distribution in settings.space.items():
        kind = distribution.kind
        value = getattr(distribution, kind)
        space[key] = {
            "loguniform": lambda v: tune.loguniform(*v),
            "uniform": lambda v: tune.uniform(*v),
            "randint": lambda v: tune.randint(v[0], v[1] + 1),
            "choice": tune.choice,
        }[kind](value)
    return space


PRETRAINING_POLL_S = 5.0


def tune_trial(config: dict[str, Any], raw: dict[str, Any], context: RunContext, source: str) -> None:
    """One trial, on a Ray worker: the trial's jobs through run_job, the fine-tune epochs reported to Tune."""
    from ray import tune

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    jobs, target = trial_jobs(trial_sweep(raw, config, source))
    trial = tune.get_context()
    last_epoch = target.config.finetune_settings.epochs - 1
    held: list[dict[str, Any]] = []

    def report(job: Job, epoch: int, metrics: dict[str, float]) -> None:
        if job.key != target.key:
            return
        result = {**{k: float(v) for k, v in metrics.items()}, "epoch": epoch, "key": job.key}
        if epoch == last_epoch:
            # Reported once the run is FINISHED: the scheduler stops a trial at max_t as soon as that result
            # arrives, which would cut the test evaluation short.
            held.append(result)
        else:
            tune.report(result)

    context = replace(
        context,
        # ASHA decides on each epoch as it ends: checkpoint (hence report) every epoch, not once a minute
        runtime=context.runtime.model_copy(update={"checkpoint_every_s": 0}),
        on_epoch=report,
        extra_tags={
            **context.extra_tags,
            "tune_trial_id": trial.get_trial_id(),
            "tune_experiment": trial.get_experiment_name(),
            "tune_params": json.dumps(config, sort_keys=True),
        },
    )
    for job in jobs:
        if job.key == target.key:
            outcome = run_job(job, context)
        else:
            # A pretraining job is shared by every trial of its method (its key has no fine-tune setting):
            # another trial may be running it; this one waits for it, then finds it FINISHED.
            outcome = run_job_when_free(job, context, poll_s=PRETRAINING_POLL_S)
        if outcome == "busy":
            raise RuntimeError(f"job {job.key} is being run by another trial (two trials sampled the same values)")
        if outcome == "skipped" and job.key == target.key:  # FINISHED before: report its logged history
            tracker = SweepTracker(context.tracking_uri, context.sweep_name)
            run = tracker.run_for_key(job.key)
            history: dict[int, dict[str, float]] = {}
            for name in ("train_loss", "val_loss", "val_acc", "val_balanced_acc", "val_auc"):
                for metric in tracker.metric_history(run.info.run_id, name):
                    history.setdefault(metric.step, {})[name] = metric.value
            for epoch in sorted(history):
                report(job, epoch, history[epoch])
    for result in held:
        tune.report(result)


def finalize_stopped(tracker: SweepTracker, trials: dict[str, tuple[str, bool]]) -> dict[str, str]:
    """Runs of trials that Tune ended before they finished (ASHA stopped them) become KILLED, tagged
    ``tune_stopped=early``; the interruption of a stopped trial is not an error.

    ``trials``: trial id -> (key of its fine-tune job, whether the trial raised). Returns key -> MLflow status.
    """
    statuses = {}
    for trial_id, (key, errored) in trials.items():
        run = tracker.run_for_key(key)
        if run is None:  # the trial failed before its run was opened: a failure, not a trial that never was
            statuses[key] = "FAILED (no MLflow run)"
            continue
        if not errored and run.info.status in (RUNNING, KILLED):
            history = tracker.logged_steps(run.info.run_id, "train_loss")
            tracker.set_tags(
                run.info.run_id,
                {
                    "tune_stopped": "early",
                    "tune_trial_id": trial_id,
                    "stopped_after_epoch": str(max(history) if history else -1),
                },
            )
            if run.data.tags.get("error_type") in ("SystemExit", "KeyboardInterrupt"):
                tracker.delete_tags(run.info.run_id, ("error", "error_type"), run.data.tags)
            if run.info.status == RUNNING:
                tracker.finish(run.info.run_id, KILLED)
            statuses[key] = KILLED
        else:
            statuses[key] = run.info.status
    return statuses


def run_search(
    raw: dict[str, Any], sweep: SweepConfig, context: RunContext, project_root: Path, source: str
) -> dict[str, str]:
    """Runs the trials; returns fine-tune key -> final MLflow status."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from ssl_hpc.launchers.ray import ray_session

    settings = sweep.tune
    assert settings is not None
    asha = settings.scheduler.asha
    finetune_epochs = trial_jobs(trial_sweep(raw, probe_values(settings), source))[1]
    max_t = (asha.max_t if asha and asha.max_t else None) or max(1, finetune_epochs.config.finetune_settings.epochs)
    scheduler = (
        ASHAScheduler(
            time_attr="training_iteration",
            max_t=max_t,
            grace_period=asha.grace_period,
            reduction_factor=asha.reduction_factor,
        )
        if asha
        else None
    )
    trainable = tune.with_resources(
        tune.with_parameters(tune_trial, raw=raw, context=context, source=source),
        {"cpu": sweep.ray.cpus_per_job, "gpu": sweep.ray.gpus_per_job},
    )
    storage = (context.output_root / "tune").resolve()
    storage.mkdir(parents=True, exist_ok=True)
    trials: dict[str, tuple[str, bool]] = {}
    with ray_session(sweep.ray, project_root, context):
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(settings),
            tune_config=tune.TuneConfig(
                metric=settings.metric,
                mode=settings.mode,
                num_samples=settings.num_samples,
                max_concurrent_trials=settings.max_concurrent,
                scheduler=scheduler,
                search_alg=BasicVariantGenerator(random_state=settings.seed),
            ),
            run_config=tune.RunConfig(name=sweep.name, storage_path=str(storage), verbose=1),
        )
        results = tuner.fit()
        for result in results:
            trial_id = result.path.rstrip("/").split("/")[-1] if result.path else ""
            key = (result.metrics or {}).get("key")
            if key is None and result.config is not None:  # failed before its first epoch
                try:
                    key = trial_jobs(trial_sweep(raw, result.config, source))[1].key
                except ConfigError:
                    continue
            trial_id = (result.metrics or {}).get("trial_id", trial_id)
            trials[trial_id] = (key, result.error is not None)
            if result.error:
                log.error("trial %s (%s) failed: %s", trial_id, key, str(result.error).splitlines()[0][:300])
    # Ray is down (if we started it): no trial process holds a run open any more.
    tracker = SweepTracker(context.tracking_uri, sweep.name)
    return finalize_stopped(tracker, trials)
