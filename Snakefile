# tracelab: packet traces -> validated tables, security features, comparisons.
# Run with `snakemake --cores 4`; traces are listed in config/traces.tsv (config/README.md).
#
# results/
#   validation/{trace}.json, .invalid.csv   validate_trace: checks, counts, rejected rows
#   packets/{trace}.parquet                  normalize_trace: one row a packet
#   features/{trace}/                        trace_features: summary.json, distributions.parquet,
#                                            endpoints, conversations, protocol hierarchy
#                                            security_connections: flows, http, conn.log,
#                                            placements of rows without ports
#                                            security_hosts: hosts, notice/http/dns.log
#                                            security_windows: windows
#   robustness/                              robustness_variants: perturbed copies;
#                                            robustness_measures: invariance, separation, transfer
#   compare/                                 compare_traces: tables, figures
#   logs/, benchmarks/                       every job's log and timing
# Every table's columns are documented in docs/tables.md.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/security.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/robustness.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
