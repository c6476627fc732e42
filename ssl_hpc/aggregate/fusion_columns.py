"""Fusion columns: the members of every fusion of ``aggregate.fusions``, fused with every rule of
``aggregate.rules``.

Runs are grouped by fine-tune mode and seed within one table (same dataset, size, label budget and
class weight). A group missing a member, or whose members' predictions are not for the same examples
in the same order, is skipped and listed as a :class:`Skip` (``skipped.csv``, the log, the command's
output): a partial or misaligned set is never fused. A fusion's cells are computed from the fused
test probabilities with :func:`classification_metrics`, the same function the runs use; its cost is
the sum of its members' (pretraining shares included).
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from ssl_hpc.aggregate.collect import RunRecord
from ssl_hpc.aggregate.columns import ColumnData, Naming, SeedOutcome, finetune_rank
from ssl_hpc.config import AggregateSettings
from ssl_hpc.evaluate.fusion import FusionMismatchError, Member, fuse
from ssl_hpc.evaluate.metrics import classification_metrics, confusion

log = logging.getLogger("ssl_hpc.aggregate")


@dataclass
class Skip:
    table: str
    column: str
    seed: int | str
    reason: str


def fusion_columns(
    records: Sequence[RunRecord], settings: AggregateSettings, naming: Naming, table: str, skipped: list[Skip]
) -> list[ColumnData]:
    """Every fusion x rule x fine-tune mode of one table (its records), per seed; refusals go to ``skipped``."""
    groups: dict[tuple[str, int], list[RunRecord]] = defaultdict(list)
    for record in records:
        groups[(record.finetune, record.seed)].append(record)
    modes = sorted({mode for mode, _ in groups}, key=finetune_rank)
    seeds = sorted({seed for _, seed in groups})
    columns: list[ColumnData] = []
    for fusion, members in settings.fusions.items():
        present = [m for m in members if any(member_matches(r, m) for r in records)]
        if not present:
            skipped.append(
                Skip(
                    table,
                    f"{fusion}:*",
                    "*",
                    f"none of its members ({', '.join(members)}) has a FINISHED run in this table",
                )
            )
            continue
        for mode in modes:
            if not any(member_matches(r, m) for m in members for s in seeds for r in groups.get((mode, s), [])):
                continue  # none of the members was fine-tuned this way: no such fusion
            for seed in seeds:
                group = groups.get((mode, seed), [])
                for backbone, chosen, problem in resolve_members(members, group):
                    suffix = f"@{backbone}" if backbone else ""
                    if problem:  # one line for every rule ("*") of this fusion group
                        skipped.append(Skip(table, f"{fusion}:*{suffix}/{mode}", seed, problem))
                        continue
                    for rule in settings.rules:
                        name = f"{fusion}:{rule}{suffix}/{mode}"
                        column = next((c for c in columns if c.name == name), None)
                        if column is None:
                            column = ColumnData(name, "fusion", backbone or chosen[0].backbone, mode)
                            columns.append(column)
                        try:
                            outcome, details = fuse_group(rule, chosen, settings)
                        except FusionMismatchError as error:
                            skipped.append(Skip(table, name, seed, f"refused: {error}"))
                            continue
                        column.outcomes[seed] = outcome
                        column.details[seed] = details
    for skip in skipped:
        if skip.table == table:
            log.warning("%s: fusion %s seed %s skipped: %s", table, skip.column, skip.seed, skip.reason)
    order = {(f, r): i for i, (f, r) in enumerate((f, r) for f in settings.fusions for r in settings.rules)}

    def key(column: ColumnData):
        fusion, rest = column.name.split(":", 1)
        rule = re.split(r"[@/]", rest, maxsplit=1)[0]
        return (order.get((fusion, rule), 0), finetune_rank(column.finetune), column.name)

    return sorted((c for c in columns if c.outcomes), key=key)


def member_matches(record: RunRecord, member: str) -> bool:
    """A member names a model: ``simclr`` matches the run tagged ``model=simclr`` and, when the sweep
    gave the method several backbones (model tags ``simclr_resnet18``, ``simclr_resnet34``), each of those."""
    return record.model == member or record.model == f"{member}_{record.backbone}"


def resolve_members(members: Sequence[str], group: Sequence[RunRecord]):
    """Yields (backbone or "", member runs in declared order, problem or "") for one fusion group.

    A member trained with several backbones splits the fusion per backbone (a member trained with one
    backbone only is shared by every backbone's fusion); a member missing from the group, or from one
    backbone's fusion, is a problem, never ignored.
    """
    found = {member: [r for r in group if member_matches(r, member)] for member in members}
    missing = [member for member, runs in found.items() if not runs]
    if missing:
        yield "", [], f"member(s) {', '.join(missing)} have no FINISHED run in this group"
        return
    # a member trained with one backbone only (tagged with its bare name) joins every backbone's fusion
    shared = {m for m, runs in found.items() if len(runs) == 1 and runs[0].model == m}
    if len(shared) == len(members):
        yield "", [found[m][0] for m in members], ""
        return
    backbones = sorted({r.backbone for m, runs in found.items() if m not in shared for r in runs})
    for backbone in backbones:
        chosen, absent = [], []
        for member in members:
            runs = found[member] if member in shared else [r for r in found[member] if r.backbone == backbone]
            (chosen.append(runs[0]) if runs else absent.append(member))
        problem = f"member(s) {', '.join(absent)} have no run with backbone {backbone}" if absent else ""
        yield backbone, chosen, problem


def fuse_group(rule: str, records: Sequence[RunRecord], settings: AggregateSettings) -> tuple[SeedOutcome, dict]:
    missing = [r.model for r in records if r.test is None]
    if missing:
        raise FusionMismatchError(f"no test predictions (test_probs.npz) for {', '.join(missing)}")
    members = [Member(r.model, r.test, r.val) for r in records]  # type: ignore[arg-type]
    result = fuse(
        rule,
        members,
        greedy_metric=settings.greedy_metric,
        greedy_rounds=settings.greedy_rounds,
        stacking_c=settings.stacking_c,
    )
    test = records[0].test
    assert test is not None
    metrics = classification_metrics(test.labels, result.probs)
    hours = [r.hours() for r in records]
    n_labels = max((r.n_labels for r in records), default=math.nan)
    outcome = SeedOutcome(
        records[0].seed,
        metrics,
        [r.run_id for r in records],
        n_labels,
        sum(h[0] for h in hours),
        sum(h[1] for h in hours),
        test.labels,
        result.predictions,
        test.split_digest,
        confusion(test.labels, result.probs),
    )
    details = {name: value for name, value in result.details.items() if name in ("weights", "deciding_share")}
    details["members"] = {r.model: r.run_id for r in records}
    return outcome, details
