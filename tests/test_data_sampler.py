from collections import Counter

import pytest
import torch

from model_training.data.collate import AudioItem, collate_audio, random_crop, random_crop_offset
from model_training.data.sampler import LengthBucketSampler


def _lengths(n: int = 200, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1_000, 50_000, (n,), generator=g).tolist()


@pytest.mark.parametrize("shuffle", [True, False])
def test_sampler_respects_budget_and_covers_each_utterance_once(shuffle: bool) -> None:
    lengths = _lengths()
    sampler = LengthBucketSampler(
        lengths, max_batch_samples=120_000, max_batch_size=8, shuffle=shuffle
    )
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        for b in batches:
            assert max(lengths[i] for i in b) * len(b) <= 120_000
            assert len(b) <= 8
        counts = Counter(i for b in batches for i in b)
        assert sorted(counts) == list(range(len(lengths))) and set(counts.values()) == {1}


def test_sampler_batches_similar_lengths_and_shuffles_per_epoch() -> None:
    lengths = _lengths()
    sampler = LengthBucketSampler(lengths, max_batch_samples=200_000, seed=3)
    sampler.set_epoch(0)
    e0 = list(sampler)
    sampler.set_epoch(1)
    e1 = list(sampler)
    assert e0 != e1
    sampler.set_epoch(0)
    assert list(sampler) == e0  # same seed + epoch -> same batches
    padded = sum(max(lengths[i] for i in b) * len(b) for b in e0)
    assert padded < 1.15 * sum(lengths)  # bucketing keeps padding small


def test_oversize_utterance_forms_its_own_batch() -> None:
    lengths = [100, 5_000, 120, 90]
    sampler = LengthBucketSampler(lengths, max_batch_samples=1_000, shuffle=False)
    batches = list(sampler)
    assert [1] in batches
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3]


@pytest.mark.parametrize("replicas", [2, 3])
def test_ddp_shards_partition_the_epoch_with_equal_counts(replicas: int) -> None:
    lengths = _lengths(101)
    shards = [
        list(LengthBucketSampler(lengths, 150_000, seed=7, num_replicas=replicas, rank=r))
        for r in range(replicas)
    ]
    assert len({len(s) for s in shards}) == 1
    seen = [i for s in shards for b in s for i in b]
    assert sorted(seen) == list(range(len(lengths)))


def test_resume_mid_epoch_yields_remaining_batches() -> None:
    lengths = _lengths()
    sampler = LengthBucketSampler(lengths, 100_000, seed=1)
    sampler.set_epoch(2)
    full = list(sampler)
    it = iter(sampler)
    consumed = [next(it) for _ in range(5)]
    state = sampler.state_dict()
    assert state["batches_consumed"] == 5 and state["epoch"] == 2
    fresh = LengthBucketSampler(lengths, 100_000, seed=1)
    fresh.load_state_dict(state)
    assert consumed + list(fresh) == full
    assert list(fresh) == full  # the offset applies to one iteration only
    fresh.load_state_dict(sampler.state_dict(batches_consumed=len(full) - 1))
    assert list(fresh) == full[-1:]


def test_collate_pads_and_reports_lengths() -> None:
    items = [
        AudioItem("a", torch.ones(5), "HI", torch.tensor([1, 2])),
        AudioItem("b", torch.full((3,), 2.0), "YO", torch.tensor([3])),
    ]
    batch = collate_audio(items)
    assert batch.waveforms.shape == (2, 5) and batch.waveforms.dtype == torch.float32
    assert batch.lengths.tolist() == [5, 3]
    assert batch.waveforms[1].tolist() == [2.0, 2.0, 2.0, 0.0, 0.0]
    assert batch.labels.tolist() == [[1, 2], [3, -100]] and batch.label_lengths.tolist() == [2, 1]
    assert batch.ids == ["a", "b"] and batch.texts == ["HI", "YO"]
    assert collate_audio([AudioItem("c", torch.ones(2))]).labels is None


def test_random_crop_within_bounds_and_aligned(rng: torch.Generator) -> None:
    wave = torch.arange(10_000, dtype=torch.float32)
    starts = set()
    for _ in range(20):
        crop = random_crop(wave, 3_200, rng, align=320)
        assert crop.numel() == 3_200 and int(crop[0]) % 320 == 0
        assert torch.equal(crop, wave[int(crop[0]) : int(crop[0]) + 3_200])
        starts.add(int(crop[0]))
    assert len(starts) > 1
    assert random_crop(wave[:100], 3_200, rng).numel() == 100
    assert random_crop_offset(100, 3_200) == 0
