"""A private one-node Slurm on localhost for integration tests (not a test module).

`with slurm_cluster() as cluster:` writes a slurm.conf into a temp dir, starts a private munged (own key and
socket, run as the munge user), slurmctld and `slurmd -N localhost` (on free ports, so a system Slurm is left
alone), waits until the node is idle and yields a `SlurmCluster`; on exit it cancels the jobs it submitted,
stops the daemons (and any process still carrying this cluster's SLURM_CONF) and removes the temp dir, also
when the body failed. Every wait is bounded.

`available()` says why such a cluster cannot run here (binaries missing, not root), or None.
Settings come from /work/shared/spec/platform-notes.md ("Slurm on one machine"): no cgroups, no accounting,
fast scheduling, short credential lifetime (a requeued job starts ~11 s later instead of ~143 s).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "scancel", "squeue", "srun")
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE"}


class SlurmError(RuntimeError):
    pass


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/sbin", "/usr/local/sbin") if (p := Path(d) / name).is_file()), None
    )


def available() -> str | None:
    """None when a private cluster can be started here, else the reason it cannot."""
    if not hasattr(os, "geteuid"):
        return "Slurm needs a POSIX system"
    missing = [n for n in DAEMONS + CLIENTS if _which(n) is None]
    if missing:
        return f"Slurm/munge not installed ({', '.join(missing)} not found; apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "a private Slurm needs root (slurmd launches jobs; munged runs as the munge user)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "no 'munge' user (install the munge package)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    def __init__(self, root: Path, conf: Path):
        self.root = root
        self.conf = conf
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
        self.env["SLURM_CONF"] = str(conf)
        self.jobs: list[str] = []

    # ---- clients -----------------------------------------------------------------------------------------

    def run(self, *args: str, timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([_which(args[0]) or args[0], *args[1:]], env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise SlurmError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}")
        return proc

    def sbatch(self, script: str, **opts) -> str:
        """Submit a batch script (text); opts become `--key=value` (underscores → dashes; True → flag).
        Returns the job id."""
        path = Path(tempfile.mkstemp(prefix="job-", suffix=".sh", dir=self.root)[1])
        path.write_text(script if script.startswith("#!") else "#!/bin/bash\n" + script, encoding="utf-8")
        args = ["sbatch", "--parsable"]
        for key, value in opts.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                args.append(flag)
            elif value not in (None, False):
                args.append(f"{flag}={value}")
        job = self.run(*args, str(path)).stdout.strip().split(";")[0]
        if not job.isdigit():
            raise SlurmError(f"sbatch returned {job!r}")
        self.jobs.append(job)
        return job

    def show_job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o` as a dict (JobState, Restarts, ExitCode, ...); {} if unknown."""
        proc = self.run("scontrol", "show", "job", "-o", str(job_id), check=False)
        if proc.returncode != 0:
            return {}
        fields: dict[str, str] = {}
        for token in re.findall(r"(\S+?)=(\S*)", proc.stdout):
            fields.setdefault(token[0], token[1])
        return fields

    def state(self, job_id: str) -> str | None:
        """JobState (PENDING, RUNNING, COMPLETED, ...), or None when slurmctld does not know the job."""
        return self.show_job(job_id).get("JobState")

    def wait(self, job_id: str, states=FINAL_STATES, timeout: float = 60, poll: float = 0.25) -> str:
        """Wait until the job's state is one of `states`; returns it. Raises TimeoutError with the last state."""
        states = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.state(job_id)
            if last in states:
                return last
            time.sleep(poll)
        raise TimeoutError(f"job {job_id} not in {sorted(states)} after {timeout:.0f} s (last state {last})")

    def scancel_signal(self, job_id: str, sig: str = "USR1", batch: bool = False, full: bool = False) -> None:
        """`scancel --signal=SIG JOB`: by default to the job's steps (srun), `batch` to the batch shell only
        (what `#SBATCH --signal=B:SIG@N` does), `full` to the batch shell and all its children."""
        args = ["scancel", f"--signal={sig}"]
        if batch:
            args.append("--batch")
        if full:
            args.append("--full")
        self.run(*args, str(job_id))

    def node_state(self) -> str:
        proc = self.run("scontrol", "show", "node", "-o", "localhost", check=False)
        match = re.search(r"\bState=(\S+)", proc.stdout)
        return match.group(1) if match else f"unknown ({proc.stderr.strip()})"

    def logs(self, chars: int = 3000) -> str:
        """The tails of the daemons' logs (for assertion messages)."""
        return _logs(self.root, chars)


def _logs(root: Path, chars: int = 3000) -> str:
    parts = []
    for path in (root / "munge" / "munged.log", root / "daemons.out", root / "slurmctld.log", root / "slurmd.log"):
        with contextlib.suppress(OSError):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-chars:]}")
    return "\n".join(parts)


def _write_conf(root: Path, munge_socket: Path, cpus: int) -> Path:
    conf = root / "slurm.conf"
    conf.write_text(f"""\
ClusterName=mvtunetest
SlurmctldHost=localhost
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket},cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
KillWait=5
MinJobAge=600
ReturnToService=2
InactiveLimit=0
JobRequeue=1
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
""", encoding="utf-8")
    return conf


def _start_munged(root: Path) -> tuple[subprocess.Popen, Path]:
    """A private munged (own key, socket, log) run as the munge user in the foreground."""
    munge = pwd.getpwnam("munge")
    mdir = root / "munge"
    mdir.mkdir()
    key = mdir / "munge.key"
    key.write_bytes(os.urandom(1024))
    for path, mode in ((mdir, 0o755), (key, 0o400)):  # munged wants its socket's folder world-executable
        os.chown(path, munge.pw_uid, munge.pw_gid)
        os.chmod(path, mode)
    sock = mdir / "munge.socket"
    proc = subprocess.Popen(
        [_which("munged"), "-F", f"--socket={sock}", f"--key-file={key}", f"--pid-file={mdir / 'munged.pid'}",
         f"--log-file={mdir / 'munged.log'}", f"--seed-file={mdir / 'munged.seed'}"],
        user=munge.pw_uid, group=munge.pw_gid, extra_groups=[], cwd=mdir,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return proc, sock


def _wait_for(predicate, timeout: float, what: str, procs: list[subprocess.Popen], root: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise SlurmError(f"{Path(p.args[0]).name} exited ({p.returncode}) while waiting for {what}\n"
                                 + _logs(root))
        if predicate():
            return
        time.sleep(0.1)
    raise SlurmError(f"timed out after {timeout:.0f} s waiting for {what}\n" + _logs(root))


def _kill_strays(conf: Path) -> None:
    """Kill (by pid) processes left over from this cluster: anything whose environment holds our SLURM_CONF
    (jobs inherit it from sbatch, slurmstepd from slurmd)."""
    marker = f"SLURM_CONF={conf}".encode()
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in env:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)


def _stop(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def slurm_cluster(cpus: int | None = None, start_timeout: float = 30):
    """Start a private one-node Slurm; yields a SlurmCluster; tears it all down on exit."""
    reason = available()
    if reason:
        raise SlurmError(reason)
    root = Path(tempfile.mkdtemp(prefix="mvtune-slurm-"))
    os.chmod(root, 0o755)  # munged (munge user) must reach its folder inside
    procs: list[subprocess.Popen] = []
    cluster: SlurmCluster | None = None
    try:
        for sub in ("state", "spool"):
            (root / sub).mkdir()
        munged, sock = _start_munged(root)
        procs.append(munged)
        _wait_for(sock.exists, 10, "munged's socket", procs, root)
        conf = _write_conf(root, sock, cpus or max(2, os.cpu_count() or 1))
        cluster = SlurmCluster(root, conf)
        daemon_env = cluster.env
        out = open(root / "daemons.out", "ab")  # closed below; the daemons keep their own copies
        procs.append(subprocess.Popen([_which("slurmctld"), "-D", "-f", str(conf)], env=daemon_env, cwd=root,
                                      stdout=out, stderr=subprocess.STDOUT))
        _wait_for(lambda: cluster.run("scontrol", "ping", check=False, timeout=10).stdout.count("UP") > 0,
                  start_timeout, "slurmctld", procs, root)
        procs.append(subprocess.Popen([_which("slurmd"), "-D", "-N", "localhost", "-f", str(conf)], env=daemon_env,
                                      cwd=root, stdout=out, stderr=subprocess.STDOUT))
        out.close()
        _wait_for(lambda: cluster.node_state().startswith("IDLE"), start_timeout, "the node to be idle", procs, root)
        yield cluster
    finally:
        if cluster is not None:
            for job in cluster.jobs:
                with contextlib.suppress(Exception):
                    cluster.run("scancel", job, check=False, timeout=10)
            deadline = time.monotonic() + 15
            while cluster.jobs and time.monotonic() < deadline:
                with contextlib.suppress(Exception):
                    if all(cluster.state(j) in FINAL_STATES | {None} for j in cluster.jobs):
                        break
                time.sleep(0.25)
        for proc in reversed(procs):  # slurmd, slurmctld, munged
            with contextlib.suppress(Exception):
                _stop(proc)
        if cluster is not None:
            _kill_strays(cluster.conf)
        shutil.rmtree(root, ignore_errors=True)
