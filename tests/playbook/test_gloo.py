"""The playbooks on gloo process groups, started as `hirune playbook` starts them
(`hirune.playbook.launch`): the collectives and what gloo's reduce leaves on other ranks, the
ring all-reduce, hand data parallelism against DDP, hand ZeRO-1 against ZeroRedundancyOptimizer.
Each harness is shown to reject a broken variant (tests/playbook/playbook_broken.py)."""

from __future__ import annotations

import pytest

from hirune.playbook import collectives, data_parallel, ring, zero
from hirune.playbook.data_parallel import VARIANTS, Setup
from hirune.playbook.launch import launch

import playbook_broken as broken

SETUP = Setup(layers=1, hidden=16, heads=2, vocab=32, seq=8, batch=4, steps=2)
CAP = 5000   # bucket bytes: with SETUP's gradients the last bucket is not full (finish must flush it)


@pytest.fixture(scope="module")
def seen():
    return launch(collectives.run_all, 3)


def test_collectives_move_what_they_promise(seen):
    v = [collectives.values(r).tolist() for r in range(3)]
    after = {name: [res[name]["after"] for res in seen] for name in seen[0]}
    assert after["broadcast"] == [v[0]] * 3
    assert after["all_reduce"] == [[sum(x) for x in zip(*v)]] * 3
    assert after["gather"] == [v, None, None] and after["all_gather"] == [v] * 3
    assert after["scatter"] == v
    assert after["reduce_scatter"] == [[sum(10 * r + i for r in range(3))] for i in range(3)]
    assert after["all_to_all"] == [[[10 * j + i] for j in range(3)] for i in range(3)]


def test_gloo_reduce_leaves_partial_sums_on_the_other_ranks(seen):
    """What this torch's gloo does (torch 2.13): the destination gets the sum, and the other ranks'
    tensors are overwritten with partial sums of subsets of the ranks (NCCL leaves them as they were)."""
    obs = collectives.reduce_observation(seen)
    assert obs["destination_is_sum"]
    assert obs["all_are_subset_sums"]
    assert any(obs["changed"].values()), (
        "gloo's reduce no longer overwrites the non-destination tensors in this torch: it now behaves like NCCL; "
        "update the collectives playbook's note and this test")


def test_reduce_observation_tells_untouched_tensors_apart(seen):
    """Harness: results where the other ranks kept their tensors (NCCL's behaviour) read as unchanged."""
    untouched = [{"reduce": {**res["reduce"], "after": res["reduce"]["after"] if r == 0 else res["reduce"]["before"]}}
                 for r, res in enumerate(seen)]
    assert not any(collectives.reduce_observation(untouched)["changed"].values())


def _ring(world, impl=ring.ring_all_reduce, sizes=(12, 1001)):
    per_rank = launch(ring.check, world, sizes=sizes, impl=impl)
    return [{"world": world, **row} for row in per_rank[0]], per_rank


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ring_all_reduce_equals_all_reduce_and_sends_2_n_minus_1_k_over_n(world):
    rows, per_rank = _ring(world)
    assert ring.agree([{"world": world, **r} for ranks in per_rank for r in ranks]) == []
    for ranks in per_rank:
        for r in ranks:
            if r["elements"] % world == 0:
                assert r["sent"] == ring.formula(r["bytes"], world)
            else:   # chunks of ceil and floor: each rank sends 2 (N - 1) chunks
                size = r["bytes"] // r["elements"]
                assert r["sent"] <= 2 * (world - 1) * -(-r["elements"] // world) * size


def test_ring_harness_rejects_sending_the_wrong_chunk():
    """Harness: sending chunk r at every reduce-scatter step gives wrong sums (on sizes N divides: with
    chunks of unequal sizes gloo itself aborts the process, a size mismatch between send and receive)."""
    _, per_rank = _ring(3, broken.ring_sends_wrong_chunk, sizes=(12, 999))
    assert ring.agree([{"world": 3, **r} for ranks in per_rank for r in ranks])


def test_hand_data_parallelism_equals_ddp_and_counts_its_calls():
    results = launch(data_parallel.compare, 2, setup=SETUP, bucket_bytes=CAP)
    assert data_parallel.failures(results) == []
    params = results[0]["ddp"]["params"]
    for result in results:
        for name in VARIANTS:
            assert result[name]["bytes_per_step"] == 4 * params
        assert result["blocking"]["calls_per_step"] == result["overlapped"]["calls_per_step"] == len(
            list(SETUP.build()[0].parameters()))
        sizes = result["buckets"]["buckets"]
        assert len(sizes) == result["buckets"]["calls_per_step"] and sum(sizes) == 4 * params
        assert all(s >= CAP for s in sizes[:-1]) and sizes[-1] < CAP   # the last bucket: flushed by finish
        assert sum(result["ddp"]["buckets"]) == 4 * params


def test_data_parallel_harness_rejects_the_missing_1_over_n_and_the_dropped_bucket():
    results = launch(data_parallel.compare, 2, setup=SETUP, bucket_bytes=CAP,
                     variants={"no_division": broken.NoDivision, "drops_last_bucket": broken.DropsLastBucket})
    bad = data_parallel.failures(results)
    assert any("no_division" in b for b in bad) and any("drops_last_bucket" in b for b in bad)
    # Adam hides the missing 1/N in the weights (scale-invariant update); the gradients show it
    assert results[0]["no_division"]["grad_diff"] > 1e-3


def test_hand_zero1_equals_zero_redundancy_optimizer_with_half_the_state():
    results = launch(zero.compare, 2, setup=SETUP)
    assert zero.failures(results) == []
    for r in results:
        assert 0.3 < r["state_bytes"] / r["whole_state_bytes"] < 0.7
        assert r["broadcast"]["calls"] == r["all_reduce"]["calls"] == sum(res["owned"] for res in results)


def test_zero1_harness_rejects_a_skipped_broadcast():
    results = launch(zero.compare, 2, setup=SETUP, impl=broken.SkipsLastPartition)
    assert any(b.startswith("rank 0") for b in zero.failures(results))


def test_three_ranks_differ_from_ddp_only_in_the_key_biases():
    """With N = 3 the sums are added in another order than DDP's: gradients agree to ~1e-7, and so do the
    weights after AdamW everywhere but the key biases, whose exact gradient is 0 (rounding noise, which
    Adam's m / sqrt(v) scales to steps of size lr)."""
    results = launch(data_parallel.compare, 3, setup=Setup(layers=1, hidden=16, heads=2, vocab=32, seq=8, batch=6,
                                                           steps=2), bucket_bytes=CAP)
    for result in results:
        for name in VARIANTS:
            r = result[name]
            assert r["grad_diff"] <= 1e-6 and r["param_diff_outside_key_bias"] <= 1e-6, (name, r)
