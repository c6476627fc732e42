"""The Slurm backend's pure parts: what to submit, in which arrays, and how Slurm's answers are read."""

from __future__ import annotations

import pytest

from ssl_hpc.config import validate_sweep
from ssl_hpc.jobs import expand_jobs
from ssl_hpc.launchers.slurm import (
    AccountingEntry,
    base_ids,
    expand_job_id,
    failure_reason,
    parse_sacct,
    plan_submission,
)

SSL = "simclr"  # a method with a pretraining stage


def sweep_jobs(methods: list[str]):
    sweep = validate_sweep(
        {
            "name": "plan",
            "grid": {
                "dataset": ["pneumoniamnist"],
                "method": methods,
                "label_fraction": [1.0, 0.25],
                "finetune": ["frozen"],
            },
        }
    )
    return expand_jobs(sweep)


def keys(array) -> list[str]:
    return [job.key for pack in array.packs for job in pack]


def test_supervised_jobs_go_in_one_array_without_dependency():
    jobs = sweep_jobs(["supervised"])
    plan = plan_submission(jobs, set(), {}, set(), pack=1, array_size=1000, sweep_name="plan")
    assert len(plan.arrays) == 1 and plan.arrays[0].after is None
    assert keys(plan.arrays[0]) == [job.key for job in jobs]


def test_finetune_arrays_wait_for_their_own_pretraining_job():
    jobs = sweep_jobs([SSL, "supervised"])
    pretrain = [job for job in jobs if job.stage == "pretrain"]
    assert len(pretrain) == 1
    plan = plan_submission(jobs, set(), {}, set(), pack=1, array_size=1000, sweep_name="plan")
    by_name = {array.name: array for array in plan.arrays}
    assert keys(by_name["plan-pretrain"]) == [pretrain[0].key]
    dependent = by_name[f"plan-finetune-{pretrain[0].key}"]
    assert dependent.after == pretrain[0].key and dependent.after_job is None
    assert all(job.depends_on == (pretrain[0].key,) for pack in dependent.packs for job in pack)
    assert by_name["plan-finetune"].after is None  # the supervised reference waits for nothing
    assert plan.arrays[0].name == "plan-pretrain"  # submitted first: the others need its job id


def test_resubmission_skips_finished_and_queued_and_waits_for_a_queued_pretraining_job():
    jobs = sweep_jobs([SSL, "supervised"])
    pretrain = next(job for job in jobs if job.stage == "pretrain")
    dependents = [job for job in jobs if job.depends_on]
    supervised = [job for job in jobs if job.stage == "finetune" and not job.depends_on]
    plan = plan_submission(
        jobs,
        {supervised[0].key},
        {pretrain.key: "41_0", dependents[0].key: "42_0"},
        set(),
        pack=1,
        array_size=1000,
        sweep_name="plan",
    )
    assert plan.finished == [supervised[0].key]
    assert plan.queued == {pretrain.key: "41_0", dependents[0].key: "42_0"}
    assert sorted(plan.to_submit) == sorted([dependents[1].key, supervised[1].key])
    waiting = next(array for array in plan.arrays if array.after)
    assert keys(waiting) == [dependents[1].key] and waiting.after_job == "41_0"
    # pretraining FINISHED in MLflow: its fine-tune jobs need no dependency any more
    plan = plan_submission(jobs, {pretrain.key}, {}, set(), pack=1, array_size=1000, sweep_name="plan")
    assert all(array.after is None for array in plan.arrays) and len(plan.to_submit) == len(jobs) - 1


def test_packing_and_array_size_limits():
    jobs = sweep_jobs(["supervised"]) + sweep_jobs(["supervised"])[:0]
    jobs = expand_jobs(
        validate_sweep(
            {
                "name": "plan",
                "seeds": [1, 2, 3],
                "grid": {"dataset": ["pneumoniamnist"], "method": ["supervised"], "label_fraction": [1.0, 0.5, 0.25]},
            }
        )
    )
    assert len(jobs) == 9
    plan = plan_submission(jobs, set(), {}, set(), pack=4, array_size=2, sweep_name="plan")
    # 9 runs -> 3 packs (4, 4, 1) -> arrays of at most 2 tasks: [2 packs], [1 pack]
    assert [len(array.packs) for array in plan.arrays] == [2, 1]
    assert [[len(pack) for pack in array.packs] for array in plan.arrays] == [[4, 4], [1]]
    assert [array.name for array in plan.arrays] == ["plan-finetune-0", "plan-finetune-1"]
    assert sorted(plan.to_submit) == sorted(job.key for job in jobs)


def test_jobs_locked_by_another_process_are_not_submitted():
    jobs = sweep_jobs(["supervised"])
    plan = plan_submission(jobs, set(), {}, {jobs[0].key}, pack=1, array_size=10, sweep_name="plan")
    assert plan.running_elsewhere == [jobs[0].key] and jobs[0].key not in plan.to_submit


def test_job_ids_and_sacct_output_are_read():
    assert expand_job_id("12_[0-2,5%2]") == ["12_0", "12_1", "12_2", "12_5"]
    assert expand_job_id("12_4") == ["12_4"] and expand_job_id("13") == ["13"]
    assert base_ids(["12_0", "12_1", "9", "100_3"]) == ["9", "12", "100"]
    out = (
        "12_0|COMPLETED|0:0|None|vm|2026-01-01T00:00:00|2026-01-01T00:01:00\n"
        "12_1|OUT_OF_MEMORY|0:125|None|vm|2026-01-01T00:00:00|2026-01-01T00:01:00\n"
        "12_[2-3]|CANCELLED by 0|0:0|DependencyNeverSatisfied|None assigned|None|2026-01-01T00:02:00\n"
        "12_1.batch|OUT_OF_MEMORY|0:125||vm||\n"
    )
    entries = parse_sacct(out)
    assert set(entries) == {"12_0", "12_1", "12_2", "12_3"}
    assert entries["12_3"].state == "CANCELLED" and entries["12_1"].exit_code == "0:125"


@pytest.mark.parametrize(
    "state,exit_code,reason,expected",
    [
        ("OUT_OF_MEMORY", "0:125", "None", "OOM"),
        ("TIMEOUT", "0:0", "None", "TIMEOUT"),
        ("PREEMPTED", "0:15", "None", "PREEMPTED"),
        ("NODE_FAIL", "0:0", "None", "NODE_FAIL"),
        ("CANCELLED", "0:0", "DependencyNeverSatisfied", "CANCELLED (its pretraining job failed)"),
        ("FAILED", "1:0", "NonZeroExitCode", "FAILED (exit 1:0)"),
    ],
)
def test_failure_reasons_name_slurm_states(state, exit_code, reason, expected):
    text = failure_reason(AccountingEntry("7_1", state, exit_code, reason))
    assert text == f"slurm 7_1 {expected}"


def test_failure_reason_ends_with_the_exception_line():
    error = "Traceback (most recent call last):\n  File \"x.py\", line 1\nRuntimeError: runtime.device is 'cuda'\n"
    text = failure_reason(
        AccountingEntry("7", "FAILED", "1:0", "NonZeroExitCode"), {"error": error, "error_type": "RuntimeError"}
    )
    assert text == "slurm 7 FAILED (exit 1:0); RuntimeError: runtime.device is 'cuda'"


def test_a_cancelled_dependent_says_why_even_when_sacct_recorded_no_reason():
    """Under load sacct may record a dependent's CANCELLED state before (or without) its
    DependencyNeverSatisfied reason; the failed pretraining job tells the same story."""
    from ssl_hpc.launchers.slurm.queries import AccountingEntry
    from ssl_hpc.launchers.slurm.status import failure_reason

    with_reason = AccountingEntry("37", "CANCELLED", reason="DependencyNeverSatisfied")
    without = AccountingEntry("37", "CANCELLED", reason="None")
    assert "its pretraining job failed" in failure_reason(with_reason)
    assert "its pretraining job failed" in failure_reason(without, dependency_failed=True)
    assert failure_reason(without) == "slurm 37 CANCELLED"  # cancelled by a person: no story invented


def test_an_sbatch_call_without_a_record_stays_open_until_recorded_or_closed(tmp_path):
    """intents.jsonl: an sbatch call whose records were never written (the command died) is open; one whose
    jobs are recorded, or that was closed, is not; a malformed line is ignored, not fatal."""
    from ssl_hpc.launchers.slurm.records import (
        Intent,
        Submission,
        append_intent,
        append_records,
        close_intents,
        load_records,
        open_intents,
        slurm_dir,
    )

    def intent(sid: str) -> Intent:
        return Intent(sid, "finetune", "", (("key_a",), ("key_b", "key_c")), 1.0)

    for sid in ("recorded", "closed", "lost"):
        append_intent(tmp_path, intent(sid))
    append_records(tmp_path, [Submission("key_a", "7_0", "7", 0, "finetune", ("key_a",), "", 2.0, "recorded")])
    close_intents(tmp_path, ["closed"])
    with open(slurm_dir(tmp_path) / "intents.jsonl", "a") as file:
        file.write("{not json\n")
    pending = open_intents(tmp_path, load_records(tmp_path).values())
    assert [i.submission_id for i in pending] == ["lost"]
    assert pending[0].packs == (("key_a",), ("key_b", "key_c"))
