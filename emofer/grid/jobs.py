"""What a submitit job runs: one grid run in its folder, requeued from its checkpoint when preempted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import submitit
from omegaconf import DictConfig

from emofer.grid.folder import Runner, execute
from emofer.grid.spec import RunSpec
from emofer.report import RunResult


class RunJob(submitit.helpers.Checkpointable):
    """A grid run as a submitit job.

    Every task of the job (one per GPU on SLURM) calls it; the global rank 0
    writes the run's status. When SLURM preempts the job or its time limit
    nears, it signals the job's tasks (``USR2``; the tests send the same signal to a
    submitit-local job's task), submitit calls :meth:`checkpoint` and requeues the job, which then calls
    the runner with ``resume=True``: training continues from the run's last
    Lightning checkpoint (``emofer train --resume``).
    """

    def __call__(
        self,
        spec: RunSpec,
        cfg: DictConfig,
        run_dir: Path,
        runner: Runner,
        threads: int | None = None,
        resume: bool = False,
    ) -> RunResult:
        if threads:
            import torch

            torch.set_num_threads(threads)
        rank = submitit.JobEnvironment().global_rank
        return execute(spec, cfg, run_dir, runner, resume=resume, writer=rank == 0)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """The submission the requeued job runs: the same run, resumed."""
        return submitit.helpers.DelayedSubmission(self, *args, **{**kwargs, "resume": True})
