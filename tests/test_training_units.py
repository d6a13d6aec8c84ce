"""Pure parts of the trainer: manifest parsing, buckets, batch order, the objective, the loss log,
the non-finite guard, batch prefetching, atomic writes."""
import json
from dataclasses import replace

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


def test_objective_gives_parallel_samples_kd_and_native_samples_sd():
    import torch

    from training.objective import LossWeights, distillation_loss

    student = {"output": torch.full((2, 1, 2, 2), 2.0), "t": torch.full((2, 3), 1.0)}
    teacher = {"output": torch.full((2, 1, 2, 2), 1.0), "t": torch.full((2, 3), 3.0)}
    target = torch.zeros(2, 1, 2, 2)  # L_SD = 4, L_LKD = 1, L_FKD = 4 for both samples
    kd = torch.tensor([1.0, 0.0])  # a parallel and a native sample
    weights = LossWeights(sd=0.5, logit=1.0, feature=0.1, text=2.0)
    text = torch.tensor([3.0, 3.0])
    loss, parts = distillation_loss(student, teacher, target, kd, ["t"], weights, text)
    assert parts["loss"].tolist() == pytest.approx([1.0 + 0.4 + 6.0, 0.5 * 4.0])
    assert parts["sd_mask"].tolist() == [0.0, 1.0] and loss.item() == pytest.approx((7.4 + 2.0) / 2)
    _, ablation = distillation_loss(student, teacher, target, kd, ["t"], replace(weights, sd_on_parallel=True), text)
    assert ablation["loss"].tolist() == pytest.approx([2.0 + 7.4, 2.0]) and ablation["sd_mask"].tolist() == [1.0, 1.0]


def test_loss_weights_say_when_nothing_can_train():
    from training.objective import LossWeights

    pea = LossWeights()
    assert pea.terms(native=True, parallel=True) == ["L_SD", "logit KD", "feature KD"]
    no_kd = LossWeights(logit=0.0, feature=0.0)
    assert no_kd.terms(native=False, parallel=True) == []
    assert replace(no_kd, sd_on_parallel=True).terms(native=False, parallel=True) == ["L_SD"]
    assert LossWeights(sd=0.0).terms(native=True, parallel=False) == []


def test_loss_window_averages_each_part_over_the_samples_that_get_it():
    import torch

    from training.loss_window import LossWindow, loss_sums, non_finite

    kd = torch.tensor([1.0, 1.0, 0.0])
    parts = {"loss": torch.tensor([1.0, 2.0, 3.0]), "sd": torch.tensor([9.0, 9.0, 3.0]),
             "lkd": torch.tensor([1.0, 2.0, 7.0]), "fkd": torch.tensor([4.0, 6.0, 7.0]),
             "text": torch.zeros(3), "kd_mask": kd, "sd_mask": 1 - kd}
    window = LossWindow()
    window.add(loss_sums(parts))
    window.add(loss_sums(parts))
    means = window.means()
    assert means == {"loss": 2.0, "sd": 3.0, "lkd": 1.5, "fkd": 5.0, "text": 0.0, "samples": 3}
    assert window.steps == 0 and window.means() == {"samples": 0}  # nothing since the last line
    parts["fkd"] = torch.tensor([1.0, float("inf"), 0.0])
    assert non_finite(loss_sums(parts)) == ["fkd"]


def test_step_guard_stops_after_too_many_skips_in_a_row(tmp_path):
    from training.nonfinite import NonFiniteError, StepGuard

    guard = StepGuard(max_in_a_row=2)
    guard.skip(4, ["loss"], None)
    guard.good()
    guard.skip(9, ["loss"], None)
    with pytest.raises(NonFiniteError, match=r"stopped at step 10: 2 steps in a row .*3 skipped in all.*"
                                             r"Last good checkpoint: .*step_0000008.pt"):
        guard.skip(10, ["adapter gradients"], tmp_path / "step_0000008.pt")
    assert guard.state() == {"skipped_steps": 3, "skipped_in_a_row": 2}


def test_prefetcher_keeps_order_and_hands_on_worker_errors():
    import threading

    from training.batches import Prefetcher

    threads = set()

    def prepare(n):
        threads.add(threading.current_thread().name)
        if n == 5:
            raise ValueError("bad item 5")
        return n * 10

    with Prefetcher(iter([(n,) for n in range(8)]), prepare) as stream:
        assert [next(stream) for _ in range(5)] == [0, 10, 20, 30, 40]
        with pytest.raises(ValueError, match="bad item 5"):
            next(stream)
    assert threads == {"pea-batch-prefetch"}
    with Prefetcher(iter([(n,) for n in range(3)]), prepare) as stream:
        assert list(stream) == [0, 10, 20]
    endless = Prefetcher(((n,) for n in iter(int, 1)), prepare)  # never exhausted: close() still returns
    next(endless)
    endless.close()


def test_atomic_write_uses_unique_temp_names_and_the_umask(tmp_path):
    import os
    import threading

    from adapters.file_format import atomic_write

    seen = []
    old = os.umask(0o027)
    try:
        path = atomic_write(tmp_path / "sub" / "f.json", lambda tmp: (seen.append(tmp), open(tmp, "w").write("1")))
    finally:
        os.umask(old)
    assert path.read_text() == "1" and oct(path.stat().st_mode & 0o777) == oct(0o640)
    barrier = threading.Barrier(4)

    def write(tmp):
        seen.append(tmp)
        barrier.wait(timeout=10)  # all four temp files exist at once
        with open(tmp, "w") as f:
            f.write("2")

    threads = [threading.Thread(target=atomic_write, args=(path, write)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 5 and path.read_text() == "2" and os.listdir(path.parent) == ["f.json"]
    with pytest.raises(RuntimeError):
        atomic_write(path, lambda tmp: (_ for _ in ()).throw(RuntimeError("disk full")))
    assert os.listdir(path.parent) == ["f.json"] and path.read_text() == "2"
