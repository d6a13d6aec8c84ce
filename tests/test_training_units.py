"""Pure parts of the trainer: manifest parsing, buckets, batch order."""
import json

import pytest

from training.data import BucketBatches, ManifestError, make_buckets, nearest_bucket, read_manifest


def test_manifest_errors_name_line_and_field(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"image": "a.png", "text": "猫", "en": "cat"}) + "\n"
                 + json.dumps({"image": "b.png", "text": "灯笼", "kind": "native"}) + "\n")
    records = read_manifest(m)
    assert [r.native for r in records] == [False, True] and records[0].image == tmp_path / "a.png"
    m.write_text(json.dumps({"image": "a.png", "text": "猫"}) + "\n")
    with pytest.raises(ManifestError, match=r"m.jsonl:1: a parallel sample needs an English caption in field 'en'"):
        read_manifest(m)
    m.write_text(json.dumps({"image": "a.png", "text": "猫", "en": "x", "kind": "both"}) + "\n")
    with pytest.raises(ManifestError, match=r"field 'kind' is 'both'"):
        read_manifest(m)


def test_buckets_are_near_the_native_area():
    buckets = make_buckets(1024)
    assert (1024, 1024) in buckets
    assert all(w % 64 == 0 and h % 64 == 0 and 0.7 < w * h / 1024**2 <= 1.0 for w, h in buckets)
    assert nearest_bucket(1920, 1080, buckets)[0] > nearest_bucket(1920, 1080, buckets)[1]


def test_sharded_batches_partition_the_global_batches():
    buckets = [(64, 64)] * 37 + [(64, 128)] * 11
    one = BucketBatches(buckets, batch_size=4, world=1, seed=3)
    two = [BucketBatches(buckets, batch_size=2, world=2, rank=r, seed=3) for r in range(2)]
    for (b1, idx), (b2a, a), (b2b, b) in zip(one.epoch(0), two[0].epoch(0), two[1].epoch(0)):
        assert b1 == b2a == b2b and idx == a + b
    assert one.epoch(0) != one.epoch(1)
    stream = one.iterate(0)
    first = [next(stream) for _ in range(15)]
    assert list(zip(range(5), one.iterate(10))) == list(enumerate(first[10:15]))
