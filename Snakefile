# tracelab: packet traces -> validated tables, security features, comparisons.
# Run with `snakemake --cores 4`; traces are listed in config/traces.tsv.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/validate.smk"
include: "workflow/rules/normalize.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/sharding.smk"
include: "workflow/rules/security.smk"
include: "workflow/rules/shards.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
