"""Batching: every row once per epoch, full batches with a short one last, shards that lose nothing."""

import numpy as np
from accelerate.data_loader import BatchSamplerShard

from bertreg.data import LengthGroupedBatchSampler, sorted_batches


def test_length_grouped_batches_cover_every_row_once_and_keep_the_short_batch_last():
    lengths = np.random.default_rng(0).integers(5, 300, size=1003).tolist()
    sampler = LengthGroupedBatchSampler(lengths, batch_size=16, seed=1, chunk=4)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(i for b in batches for i in b) == list(range(1003))
        assert [len(b) for b in batches[:-1]] == [16] * (len(batches) - 1) and len(batches[-1]) == 1003 % 16
        assert len(batches) == len(sampler)
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert first != list(sampler)  # reshuffled between epochs, reproducibly per epoch
    sampler.set_epoch(0)
    assert first == list(sampler)


def test_two_process_shards_of_the_training_batches_lose_no_row():
    sampler = LengthGroupedBatchSampler(list(range(61)), batch_size=16, seed=0)
    shards = [list(BatchSamplerShard(sampler, num_processes=2, process_index=r, even_batches=True)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1])
    assert set(range(61)) <= {i for shard in shards for b in shard for i in b}


def test_sorted_batches_run_longest_first():
    batches = sorted_batches([3, 9, 1, 7, 5], 2)
    assert batches == [[1, 3], [4, 0], [2]]
