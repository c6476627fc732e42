#!/usr/bin/env bash
# Smoke check of a running local Slurm cluster (started by slurm/local/up.sh).
#
# Usage:  slurm/local/check.sh            (uses $SLURM_CONF, else the default
#                                          state folder's slurm.conf)
# Env:    PYTHON  python with submitit    (default: the checkout's .venv/bin/python
#                                          if it exists, else python3)
#         SSL_HPC_SLURM_CHECK_TIMEOUT     seconds per wait (default 90)
#         SSL_HPC_SLURM_CHECK_SKIP_SUBMITIT=1  skip the submitit requeue check
# Checks: sinfo/squeue/sacct answer; a batch job COMPLETES (seen by sacct);
# --mem is schedulable; a throttled job array and an afterok dependency run in
# order; a submitit Checkpointable job is requeued on USR2 and resumes.
# Exits non-zero on any failure; last line is "check: N passed, N failed".
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${SSL_HPC_SLURM_DIR:-/tmp/ssl-hpc-slurm}
export SLURM_CONF=${SLURM_CONF:-$STATE/etc/slurm.conf}
TIMEOUT=${SSL_HPC_SLURM_CHECK_TIMEOUT:-90}
export SSL_HPC_SLURM_CHECK_TIMEOUT=$TIMEOUT
if [[ -z ${PYTHON:-} ]]; then
    PROJECT=$(cd "$HERE/../.." && pwd)
    if [[ -x $PROJECT/.venv/bin/python ]]; then PYTHON=$PROJECT/.venv/bin/python; else PYTHON=python3; fi
fi

PASSED=0
FAILED=0
log() { printf '[slurm/local/check] %s\n' "$*" >&2; }
pass() { PASSED=$((PASSED + 1)); log "PASS: $*"; }
fail() { FAILED=$((FAILED + 1)); log "FAIL: $*"; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ssl-hpc-slurm-check.XXXXXX")
chmod 755 "$WORK"

# wait_until SECONDS CMD...: retry CMD until it succeeds
wait_until() {
    local t=$1 deadline
    shift
    deadline=$((SECONDS + t))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.3
    done
}
gone_from_squeue() { [[ -z "$(squeue -h -j "$1" -o %i 2>/dev/null)" ]]; }
# sacct_states IDS: "JobID|State" of allocations (-X), one a line
sacct_states() { sacct -n -X -P -j "$1" --format=JobID,State 2>/dev/null; }
# all_completed IDS N: sacct lists N allocations for IDS and all are COMPLETED
all_completed() {
    local out
    out=$(sacct_states "$1")
    [[ $(grep -c . <<<"$out") -eq $2 ]] && ! grep -qv '|COMPLETED$' <<<"$out"
}
to_epoch() { date -d "$1" +%s; }

log "SLURM_CONF=$SLURM_CONF, work dir $WORK"

# 1. daemons answer ------------------------------------------------------------
if sinfo -h -o '%P %a %T' | grep -Eq '^debug\* up (idle|mixed|allocated)'; then
    pass "sinfo: $(sinfo -h -o '%P %a %D %T %N' | head -n1)"
else
    fail "sinfo: partition debug not up/idle: $(sinfo 2>&1)"
fi
if squeue >/dev/null; then pass "squeue answers"; else fail "squeue"; fi
if sacct -n -X -a -S now-1hours >/dev/null; then pass "sacct answers"; else fail "sacct"; fi

# 2. a plain batch job -----------------------------------------------------------
t0=$SECONDS
if jid=$(sbatch --parsable -o "$WORK/plain-%j.out" --wrap 'hostname; sleep 2'); then
    if wait_until "$TIMEOUT" gone_from_squeue "$jid" && wait_until "$TIMEOUT" all_completed "$jid" 1; then
        pass "sbatch job $jid COMPLETED (sacct: $(sacct_states "$jid" | tr '\n' ' ')) in $((SECONDS - t0))s; output: $(head -c 100 "$WORK/plain-$jid.out")"
    else
        fail "sbatch job $jid: $(sacct_states "$jid" | tr '\n' ' ')"
    fi
else
    fail "sbatch"
fi

# 3. memory request ----------------------------------------------------------
# shellcheck disable=SC2016
if jid=$(sbatch --parsable --mem=500M -c 1 -o "$WORK/mem-%j.out" --wrap 'echo mem=$SLURM_MEM_PER_NODE'); then
    if wait_until "$TIMEOUT" all_completed "$jid" 1 && grep -q 'mem=500' "$WORK/mem-$jid.out"; then
        pass "--mem=500M job $jid COMPLETED ($(cat "$WORK/mem-$jid.out"))"
    else
        fail "--mem job $jid: $(sacct_states "$jid" | tr '\n' ' ')"
    fi
else
    fail "sbatch --mem=500M"
fi

# 4. job array (throttled) + afterok dependency ----------------------------------
# shellcheck disable=SC2016
arr=$(sbatch --parsable --array=0-3%2 -o "$WORK/arr-%A_%a.out" --wrap 'echo $SLURM_ARRAY_TASK_ID; sleep 1') || arr=
dep=
if [[ -n $arr ]]; then
    dep=$(sbatch --parsable --dependency=afterok:"$arr" -o "$WORK/dep-%j.out" --wrap 'echo dep') || dep=
fi
if [[ -z $arr || -z $dep ]]; then
    fail "sbatch array/dependency (arr='$arr' dep='$dep')"
elif wait_until "$TIMEOUT" all_completed "$arr" 4 && wait_until "$TIMEOUT" all_completed "$dep" 1; then
    got=$(cat "$WORK"/arr-"$arr"_*.out | sort -n | tr '\n' ' ')
    last_end=0
    while IFS='|' read -r _ end; do
        e=$(to_epoch "$end")
        ((e > last_end)) && last_end=$e
    done < <(sacct -n -X -P -j "$arr" --format=JobID,End)
    # the throttle %2: never more than 2 tasks running at the same time
    max_conc=$(sacct -n -X -P -j "$arr" --format=Start,End | while IFS='|' read -r s e; do
        echo "$(to_epoch "$s") 1"
        echo "$(to_epoch "$e") -1"
    done | sort -k1,1n -k2,2n | awk '{c += $2; if (c > m) m = c} END {print m}')
    dep_start=$(to_epoch "$(sacct -n -X -P -j "$dep" --format=Start)")
    if [[ $got == "0 1 2 3 " ]] && ((dep_start >= last_end)) && ((max_conc <= 2)); then
        pass "array $arr (tasks: $got, max concurrent $max_conc) then dependent $dep (Start $dep_start >= last array End $last_end)"
    else
        fail "array/dependency order: tasks='$got' dep_start=$dep_start last_end=$last_end max_conc=$max_conc"
    fi
    sacct -X -j "$arr,$dep" --format=JobID,State,ExitCode,Start,End >&2
else
    fail "array $arr / dependent $dep: $(sacct_states "$arr,$dep" | tr '\n' ' ')"
fi

# 5. submitit Checkpointable requeue on USR2 -----------------------------------------
if [[ ${SSL_HPC_SLURM_CHECK_SKIP_SUBMITIT:-0} == 1 ]]; then
    log "SKIP: submitit requeue check"
elif ! "$PYTHON" -c 'import submitit' 2>/dev/null; then
    fail "submitit requeue: $PYTHON cannot import submitit (set PYTHON=...)"
elif "$PYTHON" "$HERE/submitit_requeue_check.py" "$WORK/submitit"; then
    pass "submitit Checkpointable job requeued on USR2, released with StartTime=now, resumed"
else
    fail "submitit requeue check (logs in $WORK/submitit/logs)"
fi

if ((FAILED == 0)); then
    rm -rf "$WORK"
else
    log "outputs kept in $WORK; daemon logs in $(dirname "$(dirname "$SLURM_CONF")")/log"
fi
echo "check: $PASSED passed, $FAILED failed"
((FAILED == 0))
