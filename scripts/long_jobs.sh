#!/bin/bash
# The long jobs of the open issues, resumable: each continues from its own checkpoints under
# $DTLENS_CACHE (default ~/.cache/dtlens). `scripts/long_jobs.sh start JOB...` starts them in the
# background, niced below interactive work; `scripts/long_jobs.sh stop` sends SIGTERM, on which
# each saves its state and exits (the next start continues). Logs: $DTLENS_CACHE/logs/JOB.log.
#   halfcheetah walker2d   behaviour policies (SAC, issue 27) until their target score
#   text image             embedded backbones until the held-out loss plateaus (issue 26; done)
#   synthetic              the synthetic control on a token budget (SYNTHETIC_TOKENS, issue 26)
#   budget-TASK            the laptop study's budget rule on TASK at the paper's lr (issue 28)
#   budget-TASK@LR         the same at learning rate LR, candidate 2,500 only (PLAN.md, "the
#                          learning rate": the only budget the 8 hours hold)
# Linux puts each session in its own scheduling group (autogroup), where `nice` only ranks a job
# against its own group: turn autogroup off (root) so that nice ranks these below everything else.
set -e
cd "$(dirname "$0")/.."
C=${DTLENS_CACHE:-$HOME/.cache/dtlens}
LOGS=$C/logs
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PATTERN="scripts/train_policies.py|dtlens pretrain (text|image|synthetic)|dtlens laptop-budget"

start() {  # start NICE NAME COMMAND...
    mkdir -p "$LOGS"
    nohup nice -n "$1" "${@:3}" >> "$LOGS/$2.log" 2>&1 < /dev/null &
    echo "$2: pid $! (log $LOGS/$2.log)"
}

case "$1" in
start)
    shift
    echo 0 > /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null || true
    for job in "$@"; do
        case $job in
        halfcheetah | walker2d)
            # targets (D4RL normalized): HalfCheetah 85, the issue's expert data >= 80 plus 5 for
            # the collection's action noise; Walker2d 93, D4RL's expert level (~108) less 15
            env=$([ "$job" = halfcheetah ] && echo HalfCheetah-v5 || echo Walker2d-v5)
            target=$([ "$job" = halfcheetah ] && echo 85 || echo 93)
            # the critical path now (issue 28 needs their data), so above the budget runs
            start 10 "$job" .venv/bin/python scripts/train_policies.py --env "$env" \
                --timesteps 1000000 --target-score "$target" --seed 0 --out "$C/policies/$job" ;;
        text | image) start 15 "$job" .venv/bin/dtlens pretrain "$job" --threads 1 ;;
        synthetic)
            start 15 synthetic .venv/bin/dtlens pretrain synthetic \
                --tokens "${SYNTHETIC_TOKENS:-42598400}" --threads 1 ;;  # the text run's tokens_seen
        budget-*@*)
            task=${job#budget-}
            start 17 "$job" .venv/bin/dtlens laptop-budget --task "${task%@*}" \
                --lr "${job#*@}" --candidates 2500 ;;
        budget-*) start 17 "$job" .venv/bin/dtlens laptop-budget --task "${job#budget-}" ;;
        *) echo "unknown job $job" >&2; exit 2 ;;
        esac
    done ;;
stop)
    pkill -TERM -f "$PATTERN" || true ;;
status)
    pgrep -af "$PATTERN" | cut -c1-150 || echo "no long job runs" ;;
*)
    echo "usage: scripts/long_jobs.sh start JOB... | stop | status" >&2; exit 2 ;;
esac
