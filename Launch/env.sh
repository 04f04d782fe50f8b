#!/usr/bin/env bash
# Launch/env.sh: the environment every gpt2-dist rank needs on a cluster. Sourced by the launchers
# (Launch/mpirun-cluster, Launch/slurm.sbatch) before they start the ranks; mpirun forwards it with -x, srun with
# its default --export=ALL.
#
# Input (environment):
#   THREADS_PER_RANK  BLAS/kernel threads per rank (default: $SLURM_CPUS_PER_TASK, else cores / RANKS_PER_NODE,
#                     else 1)
#   RANKS_PER_NODE    only used for the default above
#   OPENBLAS_CORETYPE kept if set; "auto" unsets it, so that every rank picks its own kernel (heterogeneous nodes)
#   CORES_PER_NODE    cores of a compute node, for gd_check_oversubscription (default: `nproc --all` here; set it
#                     when launching from a login node that differs from the compute nodes)
#   STRICT=1          gd_check_oversubscription returns 1 (not only warns) when the node is oversubscribed
#
# Exports:
#   OPENBLAS_NUM_THREADS, OMP_NUM_THREADS = THREADS_PER_RANK. (gpt2-dist also sets its thread count explicitly:
#                     the launchers pass `--threads THREADS_PER_RANK`, since its default is cores / ranks per node.)
#   OPENBLAS_CORETYPE SkylakeX (avx512f+bw+dq+vl) or Haswell (avx2+fma) from /proc/cpuinfo when unset. Debian's
#                     OpenBLAS 0.3.21 mistakes recent Intel CPUs for "Prescott" (SSE3, ~5x slower); gpt2-dist fixes
#                     this itself by re-executing once, having it in the environment avoids the re-exec.
#                     Assumes the compute nodes have the CPU of the node this runs on (see "auto" above).
#   OMPI_MCA_odls_base_sigkill_timeout=10 (kept if set)   on SIGTERM, Open MPI 4.1's mpirun sends the ranks
#                     SIGCONT, waits this long, sends SIGTERM, waits this long again, then SIGKILL; so a rank that
#                     gets SIGTERM through mpirun has this long to finish its step and checkpoint (Open MPI's
#                     default, 1 s, loses the checkpoint). Open MPI also sleeps through both waits when a rank fails,
#                     so a long timeout makes every failed job hang for minutes. Launch/mpirun-cluster stops ranks
#                     with SIGUSR1 instead (passed on at once, no deadline); this matters when something signals
#                     mpirun itself (Slurm's scancel, a batch system's preemption) and the checkpoint is big.
#
# Defines:
#   gd_check_oversubscription RANKS_PER_NODE THREADS_PER_RANK
#                     warns on stderr when RANKS_PER_NODE x THREADS_PER_RANK > cores of a node (returns 1 with
#                     STRICT=1, else 0). Oversubscribed BLAS threads spin against each other: steps get several
#                     times slower.
#   gd_env_summary    one line describing the exported environment.
#
# Worked example (4 nodes x 8 ranks x 4 threads = 32 cores per node):
#   THREADS_PER_RANK=4 source Launch/env.sh
#   STRICT=1 gd_check_oversubscription 8 4 || exit 1
#   mpirun -np 32 --map-by ppr:8:node:PE=4 --bind-to core -x OPENBLAS_NUM_THREADS -x OPENBLAS_CORETYPE \
#       -x OMP_NUM_THREADS ... .build/release/gpt2-dist train --threads 4 ...
# Run directly (`RANKS_PER_NODE=4 THREADS_PER_RANK=2 bash Launch/env.sh`) it prints what it would export and runs
# the check. When sourced it leaves the caller's shell options alone (it works under `set -euo pipefail`, which
# both launchers use, and without it).

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then set -euo pipefail; fi

gd_is_posint() { [[ "${1:-}" =~ ^[1-9][0-9]*$ ]]; }

gd_node_cores() {
    if [[ -n "${CORES_PER_NODE:-}" ]]; then echo "$CORES_PER_NODE"; else nproc --all; fi
}

# SkylakeX / Haswell / nothing, from the flags of the first CPU (as gpt2-dist's Runtime.preferredCoreType).
gd_detect_coretype() {
    local flags
    flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2-) "
    local f ok=1
    for f in avx512f avx512bw avx512dq avx512vl; do [[ "$flags" == *" $f "* ]] || ok=0; done
    if [[ $ok == 1 ]]; then echo SkylakeX; return 0; fi
    ok=1
    for f in avx2 fma; do [[ "$flags" == *" $f "* ]] || ok=0; done
    if [[ $ok == 1 ]]; then echo Haswell; return 0; fi
    return 0
}

gd_check_oversubscription() {
    local ranks=${1:-} threads=${2:-}
    if ! gd_is_posint "$ranks" || ! gd_is_posint "$threads"; then
        echo "gd_check_oversubscription: usage: gd_check_oversubscription RANKS_PER_NODE THREADS_PER_RANK" \
             "(positive integers; got '${ranks}' '${threads}')" >&2
        return 2
    fi
    local cores used src
    cores=$(gd_node_cores)
    if [[ -n "${CORES_PER_NODE:-}" ]]; then src="CORES_PER_NODE"; else src="nproc --all on $(hostname)"; fi
    used=$((ranks * threads))
    if ((used > cores)); then
        {
            echo "WARNING: oversubscribed node: ${ranks} ranks per node x ${threads} threads per rank = ${used} threads" \
                 "> ${cores} cores (${src})."
            echo "WARNING: BLAS threads will compete for cores and every step slows down several-fold." \
                 "Keep ranks per node x threads per rank <= cores, e.g. --ranks-per-node ${ranks}" \
                 "--threads-per-rank $((cores / ranks > 0 ? cores / ranks : 1))."
        } >&2
        if [[ "${STRICT:-0}" == 1 ]]; then return 1; fi
    fi
    return 0
}

gd_env_summary() {
    echo "OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS} OMP_NUM_THREADS=${OMP_NUM_THREADS}" \
         "OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-<unset: each rank detects its own>}" \
         "OMPI_MCA_odls_base_sigkill_timeout=${OMPI_MCA_odls_base_sigkill_timeout}"
}

# --- threads per rank
if [[ -z "${THREADS_PER_RANK:-}" ]]; then
    if gd_is_posint "${SLURM_CPUS_PER_TASK:-}"; then
        THREADS_PER_RANK=$SLURM_CPUS_PER_TASK
    elif gd_is_posint "${RANKS_PER_NODE:-}"; then
        THREADS_PER_RANK=$(( $(gd_node_cores) / RANKS_PER_NODE ))
        ((THREADS_PER_RANK >= 1)) || THREADS_PER_RANK=1
    else
        THREADS_PER_RANK=1
    fi
fi
if ! gd_is_posint "$THREADS_PER_RANK"; then
    echo "Launch/env.sh: THREADS_PER_RANK must be a positive integer (got '${THREADS_PER_RANK}')" >&2
    return 1 2>/dev/null || exit 1
fi
export THREADS_PER_RANK
export OPENBLAS_NUM_THREADS=$THREADS_PER_RANK
export OMP_NUM_THREADS=$THREADS_PER_RANK

# --- OpenBLAS kernel
if [[ "${OPENBLAS_CORETYPE:-}" == auto ]]; then
    unset OPENBLAS_CORETYPE
elif [[ -z "${OPENBLAS_CORETYPE:-}" ]]; then
    unset OPENBLAS_CORETYPE          # an empty value would stop gpt2-dist from choosing one
    gd_coretype=$(gd_detect_coretype)
    if [[ -n "$gd_coretype" ]]; then export OPENBLAS_CORETYPE=$gd_coretype; fi
    unset gd_coretype
else
    export OPENBLAS_CORETYPE
fi

# --- graceful preemption under mpirun
export OMPI_MCA_odls_base_sigkill_timeout=${OMPI_MCA_odls_base_sigkill_timeout:-10}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    gd_env_summary
    if gd_is_posint "${RANKS_PER_NODE:-}"; then
        gd_check_oversubscription "$RANKS_PER_NODE" "$THREADS_PER_RANK"
    fi
fi
