"""Ablation grids: many runs from one YAML, resumable, each in its own folder, on this machine or a cluster.

A grid file has a ``base`` (a preset name, a config path or an inline
config), optional ``overrides`` applied to every run, and ``grid`` (dotted
keys to lists of values; their cartesian product) and/or ``runs`` (an
explicit list of ``{id, preset, overrides, init_from}``). When both are
given, every explicit run is crossed with every grid point. ``suite: {name,
sets, folds, data_root, roots}`` adds one run per (data set, fold) of an
evaluation suite (:func:`emofer.suite.grid_points`: ids ``dfew+fold=3``, each
trained and tested on its own split), crossed with the rest; the summary then
averages over the folds. ``init_from:
<id of an earlier run>`` starts a run from that run's trained model (its
``model/`` folder, as ``train.init_from``) at the same grid point: it waits
for that run (on SLURM: its job depends on that run's job), reruns when
that run reruns, and fails when it fails. An optional
``pretrain: {face_prior: {...}}`` pretrains a face prior first (see
:func:`emofer.pretrain.pretrain_face_prior`, cached) and hands its weights
to every run whose ``model.face_prior`` is that prior; ``pretrain:
{base_model: {preset, overrides}}`` pretrains a base MLLM (stage 0, see
:func:`emofer.base_model.pretrain_base_model`, cached) that runs with
``init_from: base-model`` start from (``train.init_missing: keep``); with
``jobs > 1`` the two stages train at once. ``launcher:`` says
where runs execute (``local``, ``local-gpus``, ``slurm``, ``submitit-local``;
see :mod:`emofer.grid.launchers`).

.. code-block:: yaml

    name: agr-and-lr
    base: emo-llama-tiny
    overrides: {train.max_steps: 200}
    grid:
      model.prompt.agr: [true, false]
      train.lr: [1.0e-3, 3.0e-4]
    runs:
      - {id: fim}
      - {id: no-fim, preset: emo-llama-tiny-no-fim}

Run ids join the varied values with ``+``: string values as they are (a
component's ``name`` for a component), other values as ``key=value`` with the
last part of the key (``fim+agr=true+lr=0.001``).

Each run writes into ``OUT/runs/<id>/`` (resolved ``config.yaml``,
``status.json``, ``job.json``, ``metrics.json``, ``predictions.jsonl``,
``model/``, ``checkpoints/``); the grid writes ``results.csv``, ``results.md``
and PNG charts into ``OUT``. Re-running a grid skips finished runs (whose
config is unchanged), follows runs whose jobs are still queued or running,
restarts interrupted ones from scratch (so the results equal an
uninterrupted grid), and skips failed ones unless ``retry_failed`` is set.
A job that SLURM preempts is requeued and continues from its checkpoint.

A finished run whose parts' code changed since (its recorded fingerprint,
:mod:`~emofer.grid.fingerprint`) runs again, too.

The modules, top to bottom: :mod:`~emofer.grid.plan` (``--dry-run``) and
:mod:`~emofer.grid.watch` (the states the live table shows) >
:mod:`~emofer.grid.run` (the loop, ``--status``) >
:mod:`~emofer.grid.launchers` > :mod:`~emofer.grid.jobs` (what a submitit
job runs) > :mod:`~emofer.grid.folder` (the run-folder protocol) >
:mod:`~emofer.grid.fingerprint` (the code a run uses) >
:mod:`~emofer.grid.spec` (the grid file).
"""

from emofer.grid.folder import DONE, FAILED, PENDING, QUEUED, RUNNING, Runner, config_hash, read_status
from emofer.grid.run import grid_status, run_grid
from emofer.grid.spec import LAUNCHERS, Grid, RunSpec, expand, launcher_section, nest
from emofer.report import RunResult

__all__ = [
    "DONE",
    "FAILED",
    "LAUNCHERS",
    "PENDING",
    "QUEUED",
    "RUNNING",
    "Grid",
    "RunResult",
    "RunSpec",
    "Runner",
    "config_hash",
    "expand",
    "grid_status",
    "launcher_section",
    "nest",
    "read_status",
    "run_grid",
]
