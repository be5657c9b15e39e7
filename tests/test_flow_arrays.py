"""The fast per-flow helpers of `tracelab.security.flow_arrays` give exactly what the plain
numpy forms they replace give (the connection stage's outputs must not change)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tracelab.security.flow_arrays import (
    PerFlow,
    connected_labels,
    member_of,
    occurrence,
    ranges,
    stable_order,
)


@pytest.mark.parametrize("high", [1, 7, 10**6, 2**40])
def test_stable_order_is_lexsort(high):
    """Ties keep row order; keys too wide to pack (2^40 by 2^40) fall back to lexsort."""
    rng = np.random.default_rng(high)
    for n in (0, 1, 2, 50, 5000):
        major, minor = rng.integers(0, high, n), rng.integers(0, high, n)
        assert np.array_equal(stable_order(major, minor), np.lexsort((minor, major)))


def test_member_of_is_isin():
    rng = np.random.default_rng(1)
    values, allowed = rng.integers(0, 2**40, 10_000), rng.integers(0, 2**40, 300)
    values[::7] = allowed[rng.integers(0, 300, len(values[::7]))]
    assert np.array_equal(member_of(values, allowed), np.isin(values, allowed))
    assert not member_of(values, values[:0]).any()


def test_first_position_is_the_smallest_position():
    rng = np.random.default_rng(2)
    for n in (1, 2, 40, 3000):
        flow = np.sort(rng.integers(0, max(n // 4, 1), n))
        flow = np.unique(flow, return_inverse=True)[1].reshape(-1)
        mask = rng.random(n) < rng.random()
        per = PerFlow(flow)
        expected = per.min(np.where(mask, np.arange(n), np.inf))
        assert per.first_position(mask).tobytes() == expected.tobytes()


def test_ranges_are_the_ranges_one_after_another():
    rng = np.random.default_rng(4)
    starts, counts = rng.integers(-50, 50, 200), rng.integers(0, 6, 200)
    expected = np.concatenate([np.arange(s, s + c) for s, c in zip(starts, counts)])
    assert np.array_equal(ranges(starts, counts), expected)
    assert ranges(starts[:0], counts[:0]).size == 0


def scipy_labels(left: np.ndarray, right: np.ndarray, nodes: int) -> np.ndarray:
    graph = coo_matrix((np.ones(len(left)), (left, right)), shape=(nodes, nodes))
    return connected_components(graph, directed=False)[1]


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 40).flatmap(lambda nodes: st.tuples(
    st.just(nodes), st.lists(st.tuples(st.integers(0, nodes - 1), st.integers(0, nodes - 1)),
                             max_size=60))))
def test_connected_labels_are_scipys(graph):
    """Components and their numbering (by lowest node) as scipy.sparse.csgraph gives them."""
    nodes, edges = graph
    left, right = (np.array([edge[side] for edge in edges], np.int64) for side in (0, 1))
    assert np.array_equal(connected_labels(left, right, nodes), scipy_labels(left, right, nodes))


@pytest.mark.parametrize("shape", ["chain", "star", "random"])
def test_connected_labels_of_large_graphs_are_scipys(shape):
    """Long chains under shuffled node numbers take the most rounds of hooking."""
    rng = np.random.default_rng(3)
    nodes = 200_000
    order = rng.permutation(nodes)
    left, right = {"chain": (order[:-1], order[1:]),
                   "star": (np.full(nodes - 1, order[0]), order[1:]),
                   "random": (rng.integers(0, nodes, nodes // 2),
                              rng.integers(0, nodes, nodes // 2))}[shape]
    assert np.array_equal(connected_labels(left, right, nodes), scipy_labels(left, right, nodes))


@pytest.mark.parametrize("distinct", [1, 3, 50, 5000])
def test_occurrence_counts_earlier_rows_of_the_same_value_as_pandas_cumcount(distinct):
    values = np.random.default_rng(distinct).integers(-1, distinct, 4000)
    assert occurrence(values).tolist() == pd.Series(values).groupby(values).cumcount().tolist()
    assert occurrence(np.zeros(0, np.int64)).tolist() == []
