"""The pipeline on a real one-node SLURM cluster, through Snakemake's own SLURM executor plugin.

The fixture starts a private munged, slurmctld and slurmd on 127.0.0.1 (config from
tests/cluster/slurm.conf.template, all state in one temporary directory, no accounting database)
and stops exactly the daemons it started. Needs root and Debian's slurm-wlm and munge
(.ci/cluster_setup.sh installs them); run with `pytest -m cluster`.
"""

import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import (
    REPO,
    assert_same_connections,
    bundled_run,
    connection_outputs,
    copy_workflow,
    edited,
    packets_per_shard,
    planned_jobs,
    security_jobs,
)

pytestmark = pytest.mark.cluster

CONF_TEMPLATE = REPO / "tests" / "cluster" / "slurm.conf.template"
REQUIRED_TOOLS = (
    "munged", "slurmctld", "slurmd", "unshare", "sinfo", "squeue", "sbatch", "srun", "scancel",
)
# Memory kept back from the node for the OS and the daemons themselves.
MEMORY_MARGIN_MB = 2048
NODE_IDLE_TIMEOUT_S = 60
STOP_TIMEOUT_S = 20
# The executor's first status check comes this long after a submission (plugin default: 40 s);
# short here so the test waits on the jobs, not on the poll interval.
STATUS_CHECK_DELAY_S = 3
SLURM_FLAGS = (
    "--executor", "slurm",
    "--profile", "profiles/slurm",
    # No accounting database here: sacct cannot answer, squeue can (see MinJobAge in the conf).
    "--slurm-status-command", "squeue",
    "--slurm-no-account",
    "--slurm-init-seconds-before-status-checks", str(STATUS_CHECK_DELAY_S),
    "--slurm-keep-successful-logs",
)


class ClusterStartError(RuntimeError):
    pass


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tail(path, lines=40):
    if not path.exists():
        return f"--- {path.name}: (not written)"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- {path.name} (last {len(text)} lines)\n" + "\n".join(text)


class LocalSlurm:
    """munged + slurmctld + slurmd in the foreground, as children of this process."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "etc" / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.processes: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self):
        self._start_munge()
        self._write_conf()
        (self.root / "ctld").mkdir()
        (self.root / "slurmd").mkdir()
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        # Inside a job, the executor's jobstep calls srun with SLURM_* variables removed, so srun
        # reads /etc/slurm/slurm.conf as on any real node. slurmd and its jobs get a private mount
        # namespace where /etc/slurm is this cluster's config directory; the machine's is untouched.
        self._spawn("slurmd", [
            "unshare", "--mount", "--propagation", "private",
            "sh", "-c", 'mount --bind "$1" /etc/slurm && exec slurmd -D -f "$2" -N "$3"',
            "sh", str(self.conf.parent), str(self.conf), self.node_name,
        ])
        self._wait_for_idle_node()

    def _start_munge(self):
        munge_dir = self.munge_socket.parent
        munge_dir.mkdir()
        # munged insists that everyone may traverse to its socket, and that only it reads its key.
        munge_dir.chmod(0o755)
        key = munge_dir / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o600)
        self._spawn("munged", [
            "munged", "--foreground",
            f"--socket={self.munge_socket}",
            f"--key-file={key}",
            f"--pid-file={munge_dir / 'munged.pid'}",
            f"--seed-file={munge_dir / 'munged.seed'}",
        ])
        self._wait_until(lambda: self.munge_socket.exists(), 15, "munged to create its socket")

    def _write_conf(self):
        self.conf.parent.mkdir()
        detected = subprocess.run(
            ["slurmd", "-C"], capture_output=True, text=True, check=True
        ).stdout.splitlines()[0]
        fields = dict(item.split("=", 1) for item in detected.split())
        self.node_name = fields["NodeName"]
        real_memory = int(fields["RealMemory"])
        fields["RealMemory"] = str(max(real_memory - MEMORY_MARGIN_MB, real_memory // 2))
        node_line = " ".join(f"{key}={value}" for key, value in fields.items())
        self.conf.write_text(
            string.Template(CONF_TEMPLATE.read_text()).substitute(
                ctld_port=free_port(),
                slurmd_port=free_port(),
                munge_socket=self.munge_socket,
                state_dir=self.root,
                node_line=node_line,
            )
        )

    def _spawn(self, name, argv):
        stderr = open(self.root / f"{name}.stderr", "w")
        self.processes[name] = subprocess.Popen(
            argv, env=self.env, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
            start_new_session=True,
        )
        stderr.close()

    def node_state(self):
        listing = subprocess.run(
            ["sinfo", "--noheader", "--Node", "--format=%T"],
            env=self.env, capture_output=True, text=True, timeout=15,
        )
        return listing.stdout.strip() if listing.returncode == 0 else listing.stderr.strip()

    def _wait_for_idle_node(self):
        self._wait_until(
            lambda: self.node_state() == "idle", NODE_IDLE_TIMEOUT_S, "the node to be idle"
        )

    def _wait_until(self, ready, timeout_s, what):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            exited = {n: p.returncode for n, p in self.processes.items() if p.poll() is not None}
            if exited:
                raise ClusterStartError(
                    self.diagnosis(f"daemon exited {exited} waiting for {what}"))
            if ready():
                return
            time.sleep(0.5)
        raise ClusterStartError(self.diagnosis(f"timed out after {timeout_s} s waiting for {what}"))

    def diagnosis(self, problem):
        logs = [self.root / f"{name}.stderr" for name in self.processes]
        logs += [self.root / "slurmctld.log", self.root / "slurmd.log"]
        state = self.node_state() if self.conf.exists() else "no slurm.conf yet"
        return "\n".join([f"local SLURM cluster: {problem}; sinfo says: {state!r}"] + [
            tail(log) for log in logs
        ])

    def stop(self):
        if "slurmctld" in self.processes:
            subprocess.run(["scancel", "--user", "root"], env=self.env, capture_output=True)
        # Reverse start order: slurmd, slurmctld, then munged, which both need until they exit.
        for name in reversed(list(self.processes)):
            process = self.processes.pop(name)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def missing_requirements():
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (bash .ci/cluster_setup.sh)"
    if os.geteuid() != 0:
        return "slurmd must run as root"
    if not Path("/etc/slurm").is_dir():
        return "no /etc/slurm directory to mount this cluster's config on (slurm-client makes it)"
    return None


@pytest.fixture(scope="module")
def slurm_cluster():
    reason = missing_requirements()
    if reason:
        # CI installs the cluster: there a missing piece is a failure, not a skip.
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"local SLURM cluster: {reason}")
    # Not pytest's tmp_path: munged needs every directory above its socket to be traversable.
    root = Path(tempfile.mkdtemp(prefix="tracelab-slurm-"))
    root.chmod(0o755)
    cluster = LocalSlurm(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def snakemake(workdir, *args, env=None, timeout=1800):
    env = dict(os.environ if env is None else env)
    # Jobs import tracelab from this checkout, not from wherever the package is installed.
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(workdir / "workflow"), env.get("PYTHONPATH")])
    )
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if run.returncode != 0:
        # A failed SLURM job's log is kept: it holds the job's own traceback.
        job_logs = sorted((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
        pytest.fail("\n".join([
            f"snakemake {' '.join(args)} failed ({run.returncode}) in {workdir}:",
            run.stdout[-5000:], run.stderr[-10000:], *(tail(log) for log in job_logs),
        ]))
    return run


TWO_RULE_SNAKEFILE = """
rule all:
    input: "out/joined.txt"

rule write_part:
    output: "out/{part}.txt"
    threads: 1
    resources: mem_mb=100, runtime=5
    shell: "echo {wildcards.part} $SLURM_JOB_ID > {output}"

rule join:
    input: expand("out/{part}.txt", part=["a", "b"])
    output: "out/joined.txt"
    threads: 1
    resources: mem_mb=100, runtime=5
    shell: "cat {input} > {output}"
"""


def test_executor_runs_jobs_as_slurm_jobs(slurm_cluster, tmp_path):
    """The executor setup alone: a two-rule workflow whose jobs must run inside SLURM jobs."""
    (tmp_path / "Snakefile").write_text(TWO_RULE_SNAKEFILE)
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    snakemake(tmp_path, *SLURM_FLAGS, env=slurm_cluster.env)
    lines = (tmp_path / "out" / "joined.txt").read_text().splitlines()
    parts = [line.split() for line in lines]
    assert [part[0] for part in parts] == ["a", "b"]
    job_ids = [part[1] for part in parts if len(part) == 2]
    assert len(set(job_ids)) == 2, f"jobs did not run as distinct SLURM jobs: {lines}"


# results/ entries that record a run (timestamps, durations, memory), not its results.
RUN_RECORDS = {"logs", "benchmarks"}
TEXT_SUFFIXES = {".json", ".csv", ".md", ".tsv"}


def result_files(root):
    results = root / "results"
    return {
        path.relative_to(results)
        for path in results.rglob("*")
        if path.is_file() and path.relative_to(results).parts[0] not in RUN_RECORDS
    }


def without_root(value, root):
    """The one environment-dependent value in the results: the checkout's own location, which
    appears in a trace's absolute source path (validation report, Parquet metadata)."""
    if isinstance(value, bytes):
        return value.replace(str(root).encode(), b"<checkout>")
    return value.replace(str(root), "<checkout>")


def parquet_difference(local, cluster, local_root, cluster_root):
    local_file, cluster_file = pq.ParquetFile(local), pq.ParquetFile(cluster)
    local_table, cluster_table = local_file.read(), cluster_file.read()
    if not local_table.equals(cluster_table):
        return "table contents or schema differ"

    def metadata(table, root):
        fields = [(field.name, field.metadata) for field in table.schema]
        return [
            {without_root(k, root): without_root(v, root) for k, v in (meta or {}).items()}
            for meta in [table.schema.metadata, *(meta for _, meta in fields)]
        ]

    if metadata(local_table, local_root) != metadata(cluster_table, cluster_root):
        return "schema or field metadata differ"

    def row_groups(parquet_file):
        meta = parquet_file.metadata
        return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]

    if row_groups(local_file) != row_groups(cluster_file):
        return "row groups differ"
    return None


def result_difference(relative, local_root, cluster_root):
    local = local_root / "results" / relative
    cluster = cluster_root / "results" / relative
    local_bytes, cluster_bytes = local.read_bytes(), cluster.read_bytes()
    if local_bytes == cluster_bytes:
        return None
    if relative.suffix == ".parquet":
        return parquet_difference(local, cluster, local_root, cluster_root)
    if relative.suffix in TEXT_SUFFIXES and without_root(local_bytes, local_root) == without_root(
        cluster_bytes, cluster_root
    ):
        return None
    # Everything else (figures included) must be byte-identical: matplotlib's Agg PNG writer
    # embeds no date, only its version, which is the same on both sides.
    return "bytes differ"


def profile_groups(checkout) -> dict[str, str]:
    """rule -> group, as the SLURM profile groups them."""
    profile = yaml.safe_load((checkout / "profiles/slurm/config.yaml").read_text())
    return dict(entry.split("=") for entry in profile.get("groups", []))


# Packets a shard on the cluster: the bundled browsing session (14,328 packets) in 2 shards, the
# second one (13,091) and the scans (about 1,500) whole.
PACKETS_PER_SHARD = 14_000


@pytest.fixture(scope="module")
def pipeline_runs(slurm_cluster, tmp_path_factory):
    """The pipeline run locally (the session's bundled run, `--cores 2` on a copy of the repo,
    every trace whole) and on the cluster in another copy, one trace in shards, for the tests
    below."""
    checkout = copy_workflow(tmp_path_factory.mktemp("slurm") / "tracelab")
    config = checkout / "config/config.yaml"
    config.write_bytes(packets_per_shard(PACKETS_PER_SHARD)(config.read_bytes()))
    snakemake(checkout, *SLURM_FLAGS, env=slurm_cluster.env)
    return bundled_run(), checkout


def sharded_traces(checkout) -> dict[str, int]:
    """trace -> shard count of the traces in more than one shard, from the packet tables."""
    counts = {packets.stem: -(-pq.ParquetFile(packets).metadata.num_rows // PACKETS_PER_SHARD)
              for packets in (checkout / "results/packets").glob("*.parquet")}
    return {trace: shards for trace, shards in counts.items() if shards > 1}


def test_pipeline_on_slurm_runs_a_group_job_a_trace_and_a_job_a_shard(pipeline_runs):
    _, checkout = pipeline_runs
    # Every pipeline job writes one benchmark, every SLURM job one log: one SLURM job a trace
    # for the rules the profile groups (in turn on one node), one a job for the others.
    benchmarks = sorted((checkout / "results" / "benchmarks").rglob("*.tsv"))
    slurm_logs = checkout / ".snakemake" / "slurm_logs"
    jobs = Counter(log.relative_to(slurm_logs).parts[0] for log in slurm_logs.rglob("*.log"))
    grouped = profile_groups(checkout)
    traces = len(list((checkout / "results/packets").glob("*.parquet")))
    assert set(grouped.values()) == {"trace"} and traces == 6
    # the executor names a group's logs group_{group}_{its rules}
    group_jobs = [name for name in jobs if name.startswith("group_trace_")]
    assert sum(jobs.pop(name) for name in group_jobs) == traces, jobs
    assert not {f"rule_{rule}" for rule in grouped} & set(jobs), jobs
    assert benchmarks and sum(jobs.values()) == len(benchmarks) - len(grouped) * traces, (
        benchmarks, jobs)

    # A SLURM job a shard, each with its own job id; the shards' temporary tables removed.
    shard_logs = sorted(slurm_logs.glob("rule_security_connections_shard/*/*.log"))
    sharded = sharded_traces(checkout)
    assert sharded == {"web_browsing": 2}
    expected = {f"{trace}_{shards}_{shard}" for trace, shards in sharded.items()
                for shard in range(shards)}
    assert {log.parent.name for log in shard_logs} == expected, shard_logs
    assert len({log.stem for log in shard_logs}) == len(expected)
    assert not any((checkout / "results/shards").rglob("*.parquet"))


def test_pipeline_on_slurm_equals_local_run(pipeline_runs):
    """Every result file equal to the local run's; a sharded trace's connection tables hold the
    same rows (their order is the merge's)."""
    local_run, checkout = pipeline_runs
    local_files, cluster_files = result_files(local_run), result_files(checkout)
    assert local_files == cluster_files
    sharded = sharded_traces(checkout)
    for trace in sharded:
        assert_same_connections(connection_outputs(local_run / "results/features" / trace),
                                connection_outputs(checkout / "results/features" / trace))
    merged = {path for trace in sharded
              for path in connection_outputs(Path("features", trace)).values()}
    differences = {
        str(relative): difference
        for relative in sorted(local_files - merged)
        if (difference := result_difference(relative, local_run, checkout))
    }
    assert not differences, f"SLURM results differ from the local run's: {differences}"


def test_a_new_shard_size_reruns_only_the_traces_whose_shard_count_changes(pipeline_runs):
    _, checkout = pipeline_runs
    assert planned_jobs(checkout) == {}  # the sharded run left nothing to do
    n = len(sharded_traces(checkout))
    with edited(checkout / "config/config.yaml", packets_per_shard(10_000_000)):
        jobs = security_jobs(checkout)
    # Their connection jobs again, no shard job, and what follows.
    assert jobs == {"all": 1, "security_connections": n, "security_hosts": n,
                    "security_windows": n, "trace_features": n, "compare_traces": 1}
