"""Stage: the window matrix of one perturbed copy of a trace, and a record of what changed.

The perturbed packet table goes through the security stages' own functions (connections, then
windows), each through its files, as the original trace does; the packet, connection and HTTP
tables are temporary. One job does the three steps: a job of its own for each would start
three interpreters, each for a fraction of a second of work on the bundled traces. The record
says which packets the perturbation kept, the time offset it applied (so its windows can be
matched to the original windows they cover) and how many values of each column it changed.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tracelab.core.atomic import write_json, write_parquet
from tracelab.core.packets import PACKET_SCHEMA, read_packets
from tracelab.robustness.bootstrap import job_rng
from tracelab.robustness.perturbations import (
    NS_PER_S,
    PERTURBATIONS,
    PerturbationContext,
    timestamps_ns,
)
from tracelab.security.connections import write_connections
from tracelab.security.windows import write_windows

log = logging.getLogger(__name__)


def with_relative_time(packets: pa.Table) -> pa.Table:
    """`t_rel_s` again relative to the table's first packet (a cut starts later)."""
    ts = timestamps_ns(packets)
    relative = (ts - ts.min()) / NS_PER_S if ts.size else ts.astype(np.float64)
    index = packets.schema.get_field_index("t_rel_s")
    return packets.set_column(index, PACKET_SCHEMA.field("t_rel_s"), pa.array(relative))


def _differs(before: pa.ChunkedArray, after: pa.ChunkedArray) -> int:
    """Rows whose value changed (null to value and back count; null to null does not)."""
    if pa.types.is_dictionary(before.type):
        before, after = before.cast(pa.string()), after.cast(pa.string())
    same = pc.fill_null(pc.equal(before, after), False)
    both_null = pc.and_(pc.is_null(before), pc.is_null(after))
    return int(pc.sum(pc.invert(pc.or_(same, both_null))).as_py() or 0)


def perturbation_record(original: pa.Table, perturbed: pa.Table) -> dict:
    """Packets kept, their span in the original's time, the offset applied, values changed."""
    position = pc.index_in(perturbed.column("frame"), value_set=original.column("frame"))
    if position.null_count:
        raise ValueError("a perturbation added packets; it may only keep or change them")
    kept = original.take(position)
    before, after = timestamps_ns(kept), timestamps_ns(perturbed)
    return {
        "packets_in": original.num_rows,
        "packets_out": perturbed.num_rows,
        "kept_from": int(before.min()) if before.size else None,
        "kept_to": int(before.max()) if before.size else None,
        "time_offset_ns": int(np.median(after - before)) if before.size else 0,
        "changed": {name: _differs(kept.column(name), perturbed.column(name))
                    for name in PACKET_SCHEMA.names if name != "t_rel_s"},
    }


def write_perturbed(*, trace: str, perturbation: str, packets_path, perturbed_path,
                    params: dict, seed: int, windows: dict) -> dict:
    """The perturbed packet table, written to `perturbed_path`; its record returned."""
    spec = PERTURBATIONS[perturbation]
    packets = read_packets(packets_path)
    context = PerturbationContext(rng=job_rng(seed, trace, perturbation), params=params,
                                  window_s=windows["window_s"],
                                  min_coverage=windows["min_coverage"])
    perturbed = with_relative_time(spec.func(packets, context)).cast(
        PACKET_SCHEMA.with_metadata(packets.schema.metadata))
    write_parquet(perturbed, perturbed_path, {"perturbation": perturbation})
    return {"trace": trace, "perturbation": perturbation, "description": spec.description,
            "params": params, **perturbation_record(packets, perturbed)}


def write_variant(*, trace: str, perturbation: str, packets_path, perturbed_path, flows_path,
                  http_path, conn_log_path, windows_path, record_path, params: dict, seed: int,
                  settings: dict) -> dict:
    """Stage: results/robustness/{trace}/{perturbation}/windows.parquet and perturbation.json
    (`settings`: the config's `security` section, whose flows and windows settings the copy
    shares with the original)."""
    record = write_perturbed(trace=trace, perturbation=perturbation, packets_path=packets_path,
                             perturbed_path=perturbed_path, params=params, seed=seed,
                             windows=settings["windows"])
    write_connections(trace=trace, packets_path=perturbed_path, flows_path=flows_path,
                      http_path=http_path, conn_log_path=conn_log_path,
                      settings=settings["flows"])
    write_windows(trace=trace, packets_path=perturbed_path, flows_path=flows_path,
                  http_path=http_path, windows_path=windows_path, settings=settings["windows"])
    write_json(record_path, record)
    log.info("%s, %s: %d of %d packets kept, changed %s", trace, perturbation,
             record["packets_out"], record["packets_in"],
             {k: v for k, v in record["changed"].items() if v})
    return record
