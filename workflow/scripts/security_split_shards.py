from tracelab.core.runner import run_stage
from tracelab.security.shards import split_shards

run_stage(
    snakemake,
    split_shards,
    packets_path=snakemake.input.packets,
    directory=snakemake.output.shards,
    shards=int(snakemake.wildcards.shards),
)
