"""Experiments: one file that runs every stage, locally or as chained Slurm jobs (see docs/slurm.md)."""

#: Exit codes of `mvtune pipeline run/status/cancel`.
EXIT_OK = 0  # run: finished (local) or submitted (slurm); status: every stage done
EXIT_FAILED = 1  # a stage or shard failed (or was cancelled)
EXIT_USAGE = 2  # the experiment file or folder is not usable; nothing was run
EXIT_RUNNING = 3  # status: jobs are still pending or running
EXIT_SLURM = 4  # Slurm refused a submission or its commands are missing
