"""The copies of one trace, made in one job: a time shift or a one-to-one renaming applied to the
original's connections gives the windows that assembling the copy's connections again gives,
and the copies do not depend on how the packet table is cut into row groups, nor on whether
they are made whole in memory or streamed through scratch files; a trace above the sample size
is copied as its middle run of windows would be, alone."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO
from packet_factory import handshake, packet_table, portless, tcp, udp

from tracelab.robustness import invariance, sample, variants
from tracelab.robustness import perturbations as registry
from tracelab.robustness.variants import write_variants
from tracelab.security.connections import write_connections
from tracelab.security.windows import write_windows

CONFIG = yaml.safe_load((REPO / "config/config.yaml").read_text())
RELABELLING = sorted(name for name, spec in registry.PERTURBATIONS.items() if spec.relabel)
CLIENT, SCANNER = "198.18.0.3", "198.18.0.2"


def mixed_rows() -> list[dict]:
    """Browsing with names from DNS answers and port-less HTTP rows, and a SYN sweep."""
    rows = [udp(0.0, CLIENT, 5353, "198.18.0.53", 53, protocol="DNS",
                info="Standard query response 0x1a2b A www.example.com A 198.18.1.47")]
    for k in range(60):
        t = 0.5 + 0.9 * k
        server = ("www.example.com", "198.18.1.48", "49.1.18.198.host.example.net")[k % 3]
        rows += handshake(t, CLIENT, 40000 + k, server, 80)
        rows += [portless(t + 0.01, CLIENT, server, "HTTP", http_method="GET",
                          http_uri=f"/page/{k}?q=%41"),
                 portless(t + 0.03, server, CLIENT, "HTTP", http_version="HTTP/1.1",
                          http_status=200 if k % 4 else 404),
                 tcp(t + 0.05, CLIENT, 40000 + k, server, 80, "FA", seq=120, ack=900),
                 tcp(t + 0.06, server, 80, CLIENT, 40000 + k, "FA", seq=900, ack=121)]
        rows.append(tcp(t + 0.2, SCANNER, 50000 + k, f"198.18.7.{k}", 8443, "S"))
        if k % 2:
            rows.append(tcp(t + 0.201, f"198.18.7.{k}", 8443, SCANNER, 50000 + k, "RA", seq=0,
                            ack=1))
    return sorted(rows, key=lambda row: row["t"])


def run_copies(folder, perturbations: list[str], row_group_size: int = 10_000,
               partition_packets: int | None = None, sample_packets: int | None = None) -> dict:
    """The copies' window matrices (perturbation -> frame) and records of the mixed trace, its
    clock in microseconds (as a CSV export's); with `partition_packets` below the trace's
    packets, the copies are streamed through scratch files and their connections assembled
    in partitions (else each copy is made whole in memory); with `sample_packets` below them,
    the copies are made of the trace's middle run of windows."""
    folder.mkdir(parents=True, exist_ok=True)
    return copies_of(folder, write_mixed(folder, row_group_size), perturbations,
                     partition_packets, sample_packets)


def write_mixed(folder, row_group_size: int) -> Path:
    """The mixed trace's packet table, its clock in microseconds, in `folder`."""
    table = packet_table(mixed_rows())
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    field = table.schema.field("ts")
    table = table.set_column(table.schema.get_field_index("ts"), field,
                             pa.array(ts - ts % 1000).cast(field.type))
    pq.write_table(table, folder / "packets.parquet", row_group_size=row_group_size)
    return folder / "packets.parquet"


def copies_of(folder, packets_path, perturbations: list[str],
              partition_packets: int | None = None, sample_packets: int | None = None) -> dict:
    """The copies' window matrices and records of the packet table at `packets_path` (a trace
    named mixed), its connections and windows made by their stages in `folder`."""
    paths = {"packets": packets_path, **{name: folder / f"{name}.parquet"
                                         for name in ("flows", "http")}}
    write_connections(trace="mixed", packets_path=paths["packets"], flows_path=paths["flows"],
                      http_path=paths["http"], settings=CONFIG["security"]["flows"])
    write_windows(trace="mixed", packets_path=paths["packets"], flows_path=paths["flows"],
                  http_path=paths["http"], windows_path=folder / "windows.parquet",
                  settings=CONFIG["security"]["windows"])
    windows = [folder / name / "windows.parquet" for name in perturbations]
    # As the workflow gives them: a sample's copies get none of the original's tables.
    originals = {} if sample.is_sampled(pq.ParquetFile(packets_path).metadata.num_rows,
                                        sample_packets) else {
        "flows_path": paths["flows"], "http_path": paths["http"],
        "original_windows_path": folder / "windows.parquet"}
    write_variants(trace="mixed", perturbations=perturbations, packets_path=paths["packets"],
                   **originals, windows_paths=windows, baseline_path=folder / "baseline.parquet",
                   records_path=folder / "perturbations.json",
                   parameters=CONFIG["robustness"]["parameters"], seed=14,
                   sample_packets=sample_packets, settings=security_settings(partition_packets))
    records = json.loads((folder / "perturbations.json").read_text())
    return {name: pq.read_table(path).to_pandas() for name, path in zip(perturbations, windows)}, \
        records


def security_settings(partition_packets: int | None) -> dict:
    if partition_packets is None:
        return CONFIG["security"]
    flows = {**CONFIG["security"]["flows"], "partition_packets": partition_packets}
    return {**CONFIG["security"], "flows": flows}


def test_relabelling_after_assembly_gives_the_windows_of_assembling_again(tmp_path, monkeypatch):
    assert {"hour_shift", "date_shift", "names_to_addresses", "addresses_to_names",
            "server_addresses"} <= set(RELABELLING)
    relabelled, records = run_copies(tmp_path / "relabelled", RELABELLING)
    for name in RELABELLING:
        assert records[name]["connections"] == "the original's, relabelled"
        spec = registry.PERTURBATIONS[name]
        monkeypatch.setitem(registry.PERTURBATIONS, name, dataclasses.replace(spec, relabel=None))
    again, records = run_copies(tmp_path / "again", RELABELLING)
    for name in RELABELLING:
        assert records[name]["connections"] == "assembled again"
        assert records[name]["changed"]["ts" if "shift" in name else "dst"] > 0, name
        pd.testing.assert_frame_equal(relabelled[name], again[name], check_exact=False,
                                      rtol=1e-12, obj=name)


@pytest.fixture(scope="module")
def whole_copies(tmp_path_factory) -> tuple[dict, dict]:
    """Every configured copy of the mixed trace, its packet table one row group."""
    return run_copies(tmp_path_factory.mktemp("whole"), CONFIG["robustness"]["perturbations"])


@pytest.fixture(scope="module")
def copies_of_37(tmp_path_factory) -> tuple[dict, dict]:
    """Every configured copy, the packet table in row groups of 37 packets."""
    return run_copies(tmp_path_factory.mktemp("cut"), CONFIG["robustness"]["perturbations"], 37)


def test_copies_do_not_depend_on_the_row_groups(tmp_path, whole_copies, copies_of_37):
    chosen = CONFIG["robustness"]["perturbations"]
    whole, whole_records = whole_copies
    for cut, cut_records in (copies_of_37, run_copies(tmp_path / "cut", chosen, 500)):
        for name in chosen:
            pd.testing.assert_frame_equal(whole[name], cut[name], check_exact=False,
                                          rtol=1e-12, obj=name)
            assert whole_records[name] == cut_records[name], name


def test_copies_streamed_through_files_equal_the_copies_in_memory(tmp_path, monkeypatch,
                                                                  copies_of_37):
    # Streamed (connections in partitions of 150 packets; the trace has 511, so its requests
    # are read in other batches: means equal up to rounding) and in memory.
    chosen = CONFIG["robustness"]["perturbations"]
    memory, memory_records = copies_of_37
    streamed_calls = []
    streamed = variants.streamed_windows
    monkeypatch.setattr(variants, "streamed_windows",
                        lambda *args: streamed_calls.append(args) or streamed(*args))
    files, file_records = run_copies(tmp_path / "files", chosen, 37, partition_packets=150)
    assert len(streamed_calls) == 1
    assert memory_records == file_records
    for name in chosen:
        pd.testing.assert_frame_equal(memory[name], files[name], check_exact=False, rtol=1e-12,
                                      obj=name)


def test_a_relabelled_copy_in_memory_has_the_original_windows_to_the_last_bit(tmp_path):
    # A shift or a renaming moves no packet between windows: every value but the times is
    # the original's, bit for bit (a rounding difference would make the KS distance > 0).
    copies, _ = run_copies(tmp_path, ["date_shift", "hour_shift", "server_addresses"], 37)
    original = pq.read_table(tmp_path / "windows.parquet").to_pandas()
    for name, moved in [("date_shift", ["start_ts"]), ("server_addresses", []),
                        ("hour_shift", ["start_ts", "hour_of_day_utc"])]:
        assert [column for column in original if not original[column].equals(
            copies[name][column])] == moved, name


def test_a_renaming_that_merges_two_endpoints_is_not_applied_after_assembly():
    # Two names of one address: their connections could merge, so the copy is assembled again.
    merging = registry.Relabel(names={"www.example.com": "198.18.1.47",
                                      "47.1.18.198.host.example.net": "198.18.1.47"})
    assert not merging.one_to_one(["www.example.com", "47.1.18.198.host.example.net"])
    onto_existing = registry.Relabel(names={"www.example.com": "198.18.1.47"})
    assert not onto_existing.one_to_one(["www.example.com", "198.18.1.47"])
    assert registry.Relabel(offset_ns=5).one_to_one(["a", "b"])


def test_a_copy_that_changed_nothing_keeps_the_original_windows(tmp_path):
    # The mixed trace's clock is in microseconds already: clock_us changes no value.
    copies, records = run_copies(tmp_path, ["clock_us", "clock_ms"])
    assert records["clock_us"]["connections"] == "unchanged: the original's windows"
    assert sum(records["clock_us"]["changed"].values()) == 0
    original = pq.read_table(tmp_path / "windows.parquet").to_pandas()
    pd.testing.assert_frame_equal(copies["clock_us"], original)
    assert records["clock_ms"]["connections"] == "assembled again"
    assert records["clock_ms"]["changed"]["ts"] > 0


def test_a_trace_above_sample_packets_is_copied_as_its_middle_run_would_be_alone(tmp_path):
    # The middle run of windows within 250 of the mixed trace's 511 packets: its copies and
    # baseline equal those of the run written as a trace of its own and copied whole.
    chosen = ["hour_shift", "timing_jitter", "first_half", "packet_loss", "clock_us",
              "server_ports"]
    sampled, records = run_copies(tmp_path / "sampled", chosen, 37, sample_packets=250)
    run = records["timing_jitter"]["sample"]
    assert all(record["sample"] == run for record in records.values())
    assert run["trace_packets"] == 511 and 150 < run["packets"] <= 250
    assert run["from_s"] % 10 == 0 and run["to_s"] % 10 == 0
    packets = pq.read_table(tmp_path / "sampled" / "packets.parquet")
    since = pd.Series(packets.column("ts").cast(pa.int64()).to_numpy())
    since = (since - since.min()) / 1e9
    inside = ((since >= run["from_s"]) & (since < run["to_s"])).to_numpy()
    assert inside.sum() == run["packets"]
    assert run["from_s"] > 0 and run["to_s"] <= since.max()  # neither end of the trace
    alone_folder = tmp_path / "alone"
    alone_folder.mkdir()
    pq.write_table(packets.filter(pa.array(inside)), alone_folder / "run.parquet",
                   row_group_size=37)
    alone, alone_records = copies_of(alone_folder, alone_folder / "run.parquet", chosen)
    baseline = pq.read_table(tmp_path / "sampled" / "baseline.parquet").to_pandas()
    pd.testing.assert_frame_equal(baseline, pq.read_table(
        alone_folder / "windows.parquet").to_pandas(), check_exact=False, rtol=1e-12)
    for name in chosen:
        assert alone_records[name]["sample"] is None
        assert {**records[name], "sample": None} == alone_records[name], name
        pd.testing.assert_frame_equal(sampled[name], alone[name], check_exact=False,
                                      rtol=1e-12, obj=name)
    pd.testing.assert_frame_equal(sampled["clock_us"], baseline)
    assert invariance.sampled_note({"mixed": records}) == (
        f" Copies made of a sample, compared with its own windows: mixed, a sample: "
        f"{run['packets']} of 511 packets, {run['from_s']:g}-{run['to_s']:g} s into "
        f"the trace.")
    assert invariance.sampled_note({"mixed": alone_records}) == ""


OCCUPIED = np.array([0, 1, 2, 4, 5, 9]), np.array([50, 10, 30, 40, 20, 5])


def test_the_middle_run_grows_on_the_side_that_holds_fewer_packets():
    run = sample.middle_run(*OCCUPIED, 100)
    # The middle packet is in window 2 (30 packets); then window 1 (10: both sides hold none,
    # the lower first), window 4 (40: the higher side holds fewer), window 0 (50) does not
    # fit, window 5 (20) does, window 9 (5) does not.
    assert (run.first_window, run.stop_window, run.packets) == (1, 6, 100)
    assert sample.middle_run(*OCCUPIED, 155) is None
    assert sample.middle_run(*OCCUPIED, 1).packets == 30  # at least the middle window


@pytest.mark.parametrize("budget", [None, 1, 99, 100, 101, 155, 156])
def test_a_trace_is_sampled_where_its_middle_run_is_taken(budget):
    # The workflow decides from the packet count which copies need the original's tables;
    # the stage samples by its windows' packets: the same decision.
    assert sample.is_sampled(155, budget) == (sample.middle_run(*OCCUPIED, budget) is not None)


def test_copies_of_the_whole_trace_without_the_originals_tables_is_a_clear_error(tmp_path):
    packets = tmp_path / "packets.parquet"
    pq.write_table(packet_table(mixed_rows()), packets)
    with pytest.raises(ValueError, match=r"mixed: .*whole trace.* flows, http, windows"):
        write_variants(trace="mixed", perturbations=["hour_shift"], packets_path=packets,
                       windows_paths=[tmp_path / "hour_shift.parquet"],
                       baseline_path=tmp_path / "baseline.parquet",
                       records_path=tmp_path / "perturbations.json",
                       parameters=CONFIG["robustness"]["parameters"], seed=14,
                       sample_packets=None, settings=CONFIG["security"])


def test_a_sample_is_read_from_the_row_groups_its_windows_reach_only(tmp_path, monkeypatch):
    path = write_mixed(tmp_path, 37)  # 14 row groups of the 511 packets
    window_s = CONFIG["security"]["windows"]["window_s"]
    read = []
    whole = variants.derived_row_groups

    def recorded(parquet, columns, groups, *args):
        if columns == variants.COPY_COLUMNS:
            read.append(groups)
        return whole(parquet, columns, groups, *args)

    monkeypatch.setattr(variants, "derived_row_groups", recorded)
    packets = variants.packets_to_copy(path, window_s, 250, 10_000)
    [groups] = read
    assert 0 < len(groups) < pq.ParquetFile(path).num_row_groups
    table = pq.read_table(path, columns=variants.COPY_COLUMNS)
    first_ns = int(pc.min(table.column("ts").cast(pa.int64())).as_py())
    assert pa.concat_tables(packets.groups).equals(
        packets.sample.within(table, first_ns, window_s))
    assert sum(rows.num_rows for rows in packets.groups) == packets.sample.packets
