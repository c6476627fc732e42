"""Sweep validation, grid expansion, overrides and run keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ssl_hpc.config import ConfigError, apply_overrides, load_sweep, validate_sweep
from ssl_hpc.jobs import check_registered_names, expand_jobs, order_jobs, run_key

SMOKE = Path(__file__).resolve().parents[1] / "sweeps" / "smoke.yaml"


def base(**changes) -> dict:
    raw = {
        "name": "t",
        "grid": {
            "dataset": ["pneumoniamnist"],
            "method": ["supervised"],
            "label_fraction": [1.0, 0.25],
            "class_weight": ["none", "inverse_count_complement"],
        },
        "finetune": {"epochs": 3},
    }
    for dotted, value in changes.items():
        raw = apply_overrides(
            raw, [f"{dotted.replace('__', '.')}={yaml.safe_dump(value, default_flow_style=True).strip()}"]
        )
    return raw


def keys(raw: dict) -> list[str]:
    return [job.key for job in expand_jobs(validate_sweep(raw))]


def test_smoke_sweep_expands_to_four_supervised_runs():
    jobs = expand_jobs(load_sweep(SMOKE))
    assert len(jobs) == 4
    assert {job.stage for job in jobs} == {"finetune"}
    budgets = sorted((job.config.label_fraction, job.config.class_weight) for job in jobs)
    assert budgets == [
        (0.25, "inverse_count_complement"),
        (0.25, "none"),
        (1.0, "inverse_count_complement"),
        (1.0, "none"),
    ]


def test_supervised_collapses_the_finetune_axis():
    raw = base(grid__finetune=["frozen", "end_to_end", "knn"])
    jobs = expand_jobs(validate_sweep(raw))
    assert len(jobs) == 4
    assert {job.config.finetune for job in jobs} == {"end_to_end"}


def test_product_over_seeds_and_axes():
    raw = base(seeds=[1, 2, 3], grid__backbone=["resnet18", "resnet34"])
    assert len(keys(raw)) == 3 * 2 * 2 * 2


def test_same_config_same_key_and_keys_are_short_and_distinct():
    first, second = keys(base()), keys(base())
    assert first == second
    assert len(set(first)) == len(first)
    assert all(len(key) == 12 for key in first)


@pytest.mark.parametrize(
    "change",
    [
        {"finetune__lr": 0.01},
        {"finetune__epochs": 4},
        {"finetune__optimizer": "adamw"},
        {"finetune__schedule": "cosine"},
        {"finetune__batch_size": 64},
        {"finetune__augment": "flip"},
        {"model__stem": "small"},
        {"seeds": [1]},
        {"grid__backbone": ["resnet34"]},
        {"grid__size": [64]},
        {"data__to_rgb": True},
    ],
)
def test_any_change_gives_new_keys(change):
    assert not set(keys(base())) & set(keys(base(**change)))


def test_settings_that_cannot_matter_keep_the_key():
    # k of a k-NN probe, trainable_last of partial, beta of a rule not in use, how the run executes.
    for change in (
        {"finetune__knn_k": 5},
        {"finetune__trainable_last": 2},
        {"finetune__effective_number_beta": 0.9},
        {"runtime__device": "cpu"},
        {"runtime__bf16": False},
        {"runtime__checkpoint_every_s": 0},
        {"backend": "slurm"},
        {"data_root": "/elsewhere"},
        {"output_dir": "/tmp/x"},
    ):
        assert keys(base(**change)) == keys(base()), change


def test_head_width_and_momentum_only_matter_where_used():
    assert keys(base(finetune__head_hidden=64)) == keys(base())  # the default head is linear
    assert keys(base(finetune__head="mlp", finetune__head_hidden=64)) != keys(base(finetune__head="mlp"))
    assert keys(base(finetune__optimizer="adamw", finetune__momentum=0.5)) == keys(base(finetune__optimizer="adamw"))
    assert keys(base(finetune__momentum=0.5)) != keys(base())  # SGD's momentum


def ssl_sweep(**changes) -> dict:
    """Two SSL methods (MAE on a ViT), frozen and k-NN fine-tuning, two class-weight rules."""
    return base(
        grid__method=["simclr", "mae"],
        grid__finetune=["frozen", "knn"],
        methods={"mae": {"backbone": ["vit_mini"]}},
        **changes,
    )


def pretrain_keys(raw: dict) -> dict[str, str]:
    return {job.config.method: job.key for job in expand_jobs(validate_sweep(raw)) if job.stage == "pretrain"}


def test_view_colour_settings_retrain_only_the_contrastive_methods():
    before, after = pretrain_keys(ssl_sweep()), pretrain_keys(ssl_sweep(pretrain__color_jitter=0.8))
    assert before["mae"] == after["mae"]  # MAE's views are crops and flips: colour jitter cannot change it
    assert before["simclr"] != after["simclr"]


def test_knn_runs_once_whatever_the_class_weight_rule():
    jobs = expand_jobs(validate_sweep(ssl_sweep()))
    knn = [job for job in jobs if job.config.finetune == "knn"]
    frozen = [job for job in jobs if job.config.finetune == "frozen"]
    assert len(frozen) == 2 * 2 * 2  # methods x label fractions x class-weight rules
    assert len(knn) == 2 * 2 and {job.config.class_weight for job in knn} == {"none"}


def test_a_variant_identical_to_a_method_is_refused():
    raw = base(grid__method=["simclr"], variants={"simclr_again": {"method": "simclr"}})
    with pytest.raises(ConfigError, match="simclr_again.*same jobs as 'simclr'"):
        expand_jobs(validate_sweep(raw))
    expand_jobs(
        validate_sweep(
            base(grid__method=["simclr"], variants={"simclr_r34": {"method": "simclr", "backbone": ["resnet34"]}})
        )
    )


def test_effective_number_beta_matters_where_used():
    raw = base(grid__class_weight=["effective_number"])
    assert keys(raw) != keys(apply_overrides(raw, ["finetune.effective_number_beta=0.9"]))


def test_key_is_a_hash_of_the_resolved_config():
    job = expand_jobs(validate_sweep(base()))[0]
    assert run_key(job.config) == job.key
    assert run_key(job.config.model_copy(update={"seed": 5})) != job.key


def test_cli_overrides_parse_values_as_yaml(tmp_path):
    sweep = load_sweep(SMOKE, ["finetune.epochs=7", "grid.label_fraction=[0.5]", "name=other", "finetune.lr=1e-3"])
    assert sweep.finetune.epochs == 7
    assert sweep.grid.label_fraction == [0.5]
    assert sweep.name == "other"
    assert sweep.finetune.lr == pytest.approx(1e-3)


def test_method_overrides_win_over_sweep_sections():
    raw = base(methods={"supervised": {"finetune": {"lr": 0.2}}}, finetune={"epochs": 3, "lr": 0.1})
    jobs = expand_jobs(validate_sweep(raw))
    assert {job.config.finetune_settings.lr for job in jobs} == {0.2}


def test_labels_per_class_budget():
    raw = base(grid__labels_per_class=[10], grid__label_fraction=[1.0])
    jobs = expand_jobs(validate_sweep(raw))
    assert {job.config.label_budget for job in jobs} == {"10_per_class"}


def test_order_puts_dependencies_first():
    jobs = expand_jobs(validate_sweep(base()))
    assert order_jobs(list(reversed(jobs))) == list(reversed(jobs))


def error_for(raw: dict) -> str:
    with pytest.raises(ConfigError) as caught:  # the schema, then the registries' names
        check_registered_names(validate_sweep(raw, source="bad.yaml"), source="bad.yaml")
    return str(caught.value)


def test_unknown_method_names_field_and_accepted_values():
    message = error_for(base(grid__method=["supervised", "simclrr"]))
    assert "grid.method" in message and "simclrr" in message and "accepted:" in message and "supervised" in message


def test_label_fraction_out_of_range():
    message = error_for(base(grid__label_fraction=[1.5]))
    assert "grid.label_fraction" in message and "(0, 1]" in message


def test_unknown_dataset_lists_the_accepted_ones():
    message = error_for(base(grid__dataset=["pneumonia"]))
    assert "grid.dataset[0]" in message and "pneumoniamnist" in message and "bloodmnist" in message


def test_multilabel_dataset_is_refused_with_reason():
    assert "multi-label" in error_for(base(grid__dataset=["chestmnist"]))


def test_unknown_field_lists_accepted_fields():
    message = error_for(base(finetune={"epochs": 3, "learning_rate": 0.1}))
    assert "finetune.learning_rate" in message and "accepted:" in message and "lr" in message


def test_wrong_type_names_the_field():
    message = error_for(base(finetune={"epochs": "many"}))
    assert "finetune.epochs" in message


def test_literal_lists_choices():
    message = error_for(base(finetune={"optimizer": "rmsprop"}))
    assert "finetune.optimizer" in message and "'sgd'" in message and "'adamw'" in message


def test_missing_grid():
    assert "grid" in error_for({"name": "x"})


def test_malformed_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ngrid: [dataset: {\n")
    with pytest.raises(ConfigError, match=r"malformed YAML at line \d+"):
        load_sweep(path)


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_sweep(path)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_sweep(SMOKE, ["finetune.epochs"])


def test_the_medmnist_table_matches_the_medmnist_package():
    """The schema lists MedMNIST's names itself (the package imports torch): they must agree."""
    from medmnist import INFO

    from ssl_hpc.config import MEDMNIST_2D_TASKS

    assert MEDMNIST_2D_TASKS == {name: info["task"] for name, info in INFO.items() if not name.endswith("3d")}


def test_the_config_is_a_leaf_and_a_sweep_validates_without_torch():
    import subprocess
    import sys

    code = (
        "import sys, ssl_hpc.config as c; c.load_sweep(sys.argv[1]); "
        "heavy = [m for m in ('torch', 'mlflow', 'ray', 'lightly') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code, str(SMOKE)], check=True)


def test_fine_tuning_defaults_follow_the_backbone_family():
    """ViTs fine-tune with AdamW, warm-up and cosine; ResNets with the thesis's SGD step schedule; a value
    the sweep sets itself wins over both."""
    raw = base(
        grid__method=["random_init"],
        grid__backbone=["resnet18", "vit_mini"],
        grid__label_fraction=[1.0],
        grid__class_weight=["none"],
        finetune={"epochs": 3},
    )
    settings = {job.config.backbone: job.config.finetune_settings for job in expand_jobs(validate_sweep(raw))}
    assert settings["resnet18"].optimizer == "sgd" and settings["resnet18"].schedule == "step"
    assert settings["vit_mini"].optimizer == "adamw" and settings["vit_mini"].warmup_epochs > 0
    raw["finetune"]["optimizer"] = "sgd"
    settings = {job.config.backbone: job.config.finetune_settings for job in expand_jobs(validate_sweep(raw))}
    assert settings["vit_mini"].optimizer == "sgd"


@pytest.mark.parametrize("value", [-1, "60", 1.5, True])
def test_the_checkpoint_interval_is_whole_non_negative_seconds(value):
    with pytest.raises(ConfigError) as caught:
        validate_sweep(base(runtime__checkpoint_every_s=value), source="bad.yaml")
    assert "runtime.checkpoint_every_s" in str(caught.value)
