"""Stage 4: what the comparison figures draw."""

import numpy as np
import pandas as pd

from tracelab.compare.compare_traces import _thinned_steps


def destinations(trace: str, n: int) -> pd.DataFrame:
    return pd.DataFrame({"kind": "destinations", "trace": trace, "x": np.arange(n) * 0.5,
                         "y": np.arange(1, n + 1, dtype=float)})


def test_a_large_step_series_is_thinned_evenly_and_keeps_its_ends():
    data = pd.concat([destinations("scan", 119_097), destinations("web", 150),
                      pd.DataFrame({"kind": "pps", "trace": "scan", "x": np.arange(5000.0),
                                    "y": 1.0})], ignore_index=True)
    drawn = _thinned_steps(data, "destinations")
    scan = drawn[(drawn["trace"] == "scan") & (drawn["kind"] == "destinations")]
    assert 1900 <= len(scan) <= 2001
    assert scan["y"].iloc[0] == 1 and scan["y"].iloc[-1] == 119_097
    assert scan["y"].diff().dropna().max() <= 60  # evenly spread: no step taller than n/2000
    assert len(drawn[drawn["trace"] == "web"]) == 150  # small series untouched
    assert len(drawn[drawn["kind"] == "pps"]) == 5000  # other kinds untouched
