# Helpers and input functions shared by every stage.
import math
import mimetypes
import os
import re
import shutil
import sys
from pathlib import Path

import pyarrow.parquet as pq
from snakemake.exceptions import IncompleteCheckpointException
from snakemake.io import is_flagged

# `snakemake --report` types each result by its extension: Parquet would be offered as text.
mimetypes.add_type("application/vnd.apache.parquet", ".parquet")

# The workflow and its jobs import tracelab from this checkout, whatever copy is installed: the
# rules' code versions hash this checkout's modules, and a `--sdm conda` environment holds only
# the dependencies (workflow/envs/tracelab.yaml).
REPO_ROOT = Path(workflow.basedir)
SCRIPTS_DIR = REPO_ROOT / "workflow" / "scripts"
PACKAGE_DIR = REPO_ROOT / "workflow" / "tracelab"
sys.path.insert(0, str(PACKAGE_DIR.parent))
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        filter(None, [str(PACKAGE_DIR.parent), os.environ.get("PYTHONPATH")])
    )
)

from tracelab.core.code_version import code_version, module_file
from tracelab.core.config import ConfigError, check_config
from tracelab.core.fingerprint import content_fingerprint
from tracelab.ingest.sheet import TraceSheetError, load_trace_sheet
from tracelab.ingest.formats import BY_NAME as FORMATS_BY_NAME
from tracelab.ingest.validate import READERS
from tracelab.features.statistics_totals import PARTITION_PACKETS

# security.shards.shard_count is this function: imported from its own module, the workflow's
# start-up does not import the connection stage (pandera, 0.2 CPU s of every run).
from tracelab.security.partitions import partition_count as shard_count
from tracelab.robustness.sample import is_sampled

CONFIG_SOURCE = " and ".join(map(str, workflow.configfiles)) or "config"
try:
    config.update(check_config(config, source=CONFIG_SOURCE))
except ConfigError as error:
    raise WorkflowError(str(error)) from None

try:
    TRACES = load_trace_sheet(REPO_ROOT / config["traces"], REPO_ROOT)
except TraceSheetError as error:
    raise WorkflowError(str(error)) from None


wildcard_constraints:
    trace="|".join(re.escape(name) for name in TRACES.index),


def trace_row(wildcards):
    return TRACES.loc[wildcards.trace]


def trace_source(wildcards):
    return trace_row(wildcards)["path"]


def trace_labels():
    """trace -> label, for the comparison stage's legends and separability."""
    return {name: row["label"] for name, row in TRACES.iterrows()}


def final_outputs():
    return [
        *expand(rules.trace_features.output.summary, trace=TRACES.index),
        *expand(rules.trace_features.output.html, trace=TRACES.index),
        rules.compare_traces.output.table,
        rules.compare_traces.output.features_csv,
        rules.compare_traces.output.scan_report,
        rules.compare_traces.output.scan_report_html,
        rules.compare_traces.output.html,
        rules.robustness_measures.output.separation,
        rules.robustness_measures.output.transfer,
    ]


def rule_code(rule_name):
    """The code version of a rule: its script's import closure in the package (see
    tracelab.core.code_version), so editing a module reruns exactly the rules that import it."""
    return code_version(SCRIPTS_DIR / f"{rule_name}.py", package_dir=PACKAGE_DIR)


def validation_code(wildcards):
    """validate_trace loads its reader by format at run time: a pcap fix reruns no CSV trace."""
    reader = module_file(READERS[trace_row(wildcards)["format"]], PACKAGE_DIR)
    return code_version(SCRIPTS_DIR / "validate_trace.py", reader, package_dir=PACKAGE_DIR)


def stale_temporaries(dag):
    """temp() outputs an interrupted run left behind: Snakemake removes one after the last job
    that reads it, so a run killed before then (or while it defers removals until its
    checkpoints are done) leaves a full copy that no later run removes. Stale here: of a job
    that does not run now and is not a target, and needed by no job that runs."""
    for job in dag.jobs:
        if dag.needrun(job) or job in dag.targetjobs:
            continue
        for output in job.output:
            if (
                is_flagged(output, "temp")
                and os.path.exists(output)
                and not dag.is_needed_tempfile(job, output)
            ):
                yield output


onstart:
    if not workflow.storage_settings.notemp:
        for output in stale_temporaries(workflow.dag):
            print(f"Removing temporary output {output} left by an interrupted run.")
            if os.path.isdir(output):
                shutil.rmtree(output)
            else:
                os.remove(output)


def validation_threads(wildcards):
    """The cores the trace's reader keeps busy (its format's declaration)."""
    return FORMATS_BY_NAME[trace_row(wildcards)["format"]].threads


def source_fingerprint(wildcards):
    """The source's content hash: a file replaced with an older mtime still reruns its trace."""
    return content_fingerprint(trace_source(wildcards), ".snakemake/tracelab/fingerprints")


def stable_params(section):
    """A config section with sorted keys: Snakemake compares params as written, so reordering
    keys in config.yaml would otherwise rerun every job that takes the section."""
    if isinstance(section, dict):
        return {key: stable_params(section[key]) for key in sorted(section)}
    return section


# --- Cluster resources ---------------------------------------------------------------------
# Every rule declares threads, mem_mb and runtime (minutes), sized from results/benchmarks of the
# bundled traces and of synthetic CSV exports of 0.2, 1, 4 and 12 million packets
# (`python -m tracelab.synth`): a base for the interpreter and libraries, plus a slope per MB of
# the job's inputs where the peak RSS grew with them, at about 1.5x the largest peak seen.
# Runtimes allow about 5x the wall time measured on a busy 2-core machine. Both grow with
# `attempt`, so a job that SLURM kills at its limit is retried with twice the room
# (profiles/slurm sets retries).


# Partitions of a packet table the connection stage assembles at once, one a thread.
CONNECTION_THREADS = 2


def connection_threads(wildcards):
    """CONNECTION_THREADS for a trace of more than one partition; one for a trace the stage
    assembles whole (its second thread would idle), so that another job can run beside it."""
    packets = known_packets(wildcards.trace)
    return CONNECTION_THREADS if packets > config["security"]["flows"]["partition_packets"] else 1


def connection_memory_mb(packets):
    """The connection stage's memory for a table of `packets` (a trace's or a shard's): peak RSS
    grows about 1 MB a thousand packets up to one partition a thread, then stays flat (1,482 MiB
    measured at 10M packets, two 1M-packet partitions at once)."""
    return held_memory_mb(min(packets, config["security"]["flows"]["partition_packets"]))


def held_memory_mb(packets):
    """A job holding `packets` packets whole while it makes their connections."""
    return 512 + CONNECTION_THREADS * packets // 1000


def variants_memory_mb(wildcards, attempt):
    """The robustness copies' memory: one copy's connections at a time, as the connection stage
    holds them; a trace above robustness.sample_packets is copied from its sample, held whole
    however large it is set."""
    sample = config["robustness"]["sample_packets"]
    packets = known_packets(wildcards.trace)
    if sample is not None and packets > sample:
        return attempt * held_memory_mb(sample)
    return attempt * connection_memory_mb(packets)


def input_mb(input):
    """MiB of a job's input files that exist (0 before they are made: the plan of a dry run).
    Snakemake's own input.size_mb, evaluated inside its event loop, leaves a coroutine never
    awaited and a RuntimeWarning per job on the console."""
    return sum(os.path.getsize(path) for path in input if os.path.isfile(path)) / 2**20


def statistics_memory_mb(packets):
    """The statistics step's memory for a table of `packets`: at worst one endpoint and one
    conversation a packet (1.0 GB measured at 1M packets from 1M distinct sources; 491 MB at 2M
    packets of lab traffic), up to one partition (totalled one at a time), then flat."""
    return 384 + min(packets, PARTITION_PACKETS) * 7 // 10_000


def features_memory_mb(wildcards, input, attempt):
    """trace_features runs its summary, then its statistics: the larger of the two (the
    summary's 256 MB + 8 a MiB of input)."""
    summary = 256 + 8 * input_mb(input)
    return math.ceil(max(summary, statistics_memory_mb(known_packets(wildcards.trace)))) * attempt


def memory_mb(base, per_input_mb=0, cap=None):
    def estimate(wildcards, input, attempt):
        need = base + per_input_mb * input_mb(input)
        return math.ceil(min(need, cap) if cap else need) * attempt

    return estimate


def runtime_minutes(base, seconds_per_input_mb):
    def estimate(wildcards, input, attempt):
        return math.ceil(base + seconds_per_input_mb * input_mb(input) / 60) * attempt

    return estimate


def row_group_memory_mb(row_group_rows):
    """normalize_trace holds up to threads + 1 row groups of parsed packets (3 with its 2
    threads), whatever the trace's size: 653 MiB peak was measured with 262,144-row groups."""
    return 512 + row_group_rows * 2 // 1024


# --- Shard plan ---------------------------------------------------------------------------


def trace_packets(trace):
    """Rows of a trace's packet table (from its Parquet footer)."""
    packets = checkpoints.normalize_trace.get(trace=trace).output.packets
    return pq.ParquetFile(packets).metadata.num_rows


def known_packets(trace):
    """Rows of a trace's packet table where it is known; before its normalization (a dry run's
    plan), as many as the connection stage holds at most."""
    try:
        return trace_packets(trace)
    except IncompleteCheckpointException:
        return CONNECTION_THREADS * config["security"]["flows"]["partition_packets"]


def trace_shards(wildcards):
    return shard_count(trace_packets(wildcards.trace), config["sharding"]["packets_per_shard"])


def shard_outputs(wildcards):
    """The shard jobs' outputs that security_connections merges (none for one shard)."""
    shards = trace_shards(wildcards)
    if shards == 1:
        return {}
    output = rules.security_connections_shard.output
    return {
        f"shard_{name}": expand(
            getattr(output, name),
            trace=wildcards.trace,
            shards=shards,
            shard=range(shards),
        )
        for name in ("flows", "http", "placements")
    }


def shard_packets(wildcards):
    """Packets of one shard, as declared for its resources (address pairs are hashed evenly)."""
    return math.ceil(trace_packets(wildcards.trace) / int(wildcards.shards))


# --- Robustness copies --------------------------------------------------------------------


def variant_inputs(wildcards):
    """The packet table, and the original's connections, requests and windows unless the copies
    are made of a sample (a trace above robustness.sample_packets), which reads none of them:
    then the copies start once the packet table is written, beside the connection stage."""
    inputs = {"packets": rules.normalize_trace.output.packets}
    if not is_sampled(trace_packets(wildcards.trace), config["robustness"]["sample_packets"]):
        inputs.update(
            flows=rules.security_connections.output.flows,
            http=rules.security_connections.output.http,
            windows=rules.security_windows.output.windows,
        )
    return inputs
