# The shard plan of each trace (the rules are in shards.smk; snakemake --lint wants functions
# and rules in separate files).
import pyarrow.parquet as pq

from tracelab.security.shards import shard_count


def trace_packets(trace):
    """Rows of a trace's packet table (from its Parquet footer)."""
    packets = checkpoints.normalize_trace.get(trace=trace).output.packets
    return pq.ParquetFile(packets).metadata.num_rows


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
        for name in ("flows", "http")
    }


def shard_packets(wildcards):
    """Packets of one shard, as declared for its resources (address pairs are hashed evenly)."""
    return math.ceil(trace_packets(wildcards.trace) / int(wildcards.shards))
