"""Pure parts of the trainer: manifest parsing, image checks, buckets, batch order, the objective,
the loss log, the non-finite guard, batch prefetching, atomic writes, run folders."""
import io
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from adapters.errors import PEAError
from training.data.sampling import BucketBatches, ManifestError, make_buckets, nearest_bucket, read_manifest


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



def test_data_that_cannot_fill_a_batch_is_a_pack_error_not_a_traceback():
    from training.data.sampling import BatchingError, ShardBatches, SkipCounter

    with pytest.raises(BatchingError, match="no bucket holds a full global batch of 8 images"):
        BucketBatches([(64, 64)] * 7, batch_size=4, world=2)
    with pytest.raises(BatchingError, match="1 shards cannot be split over 2 processes"):
        ShardBatches(["a.tar"], [(64, 64)], 4, SkipCounter(), world=2)
    assert issubclass(BatchingError, PEAError)

def test_objective_gives_parallel_samples_kd_and_native_samples_sd():
    import torch

    from training.step.objective import LossWeights, distillation_loss

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
    from training.step.objective import LossWeights

    pea = LossWeights()
    assert pea.terms(native=True, parallel=True) == ["L_SD", "logit KD", "feature KD"]
    no_kd = LossWeights(logit=0.0, feature=0.0)
    assert no_kd.terms(native=False, parallel=True) == []
    assert replace(no_kd, sd_on_parallel=True).terms(native=False, parallel=True) == ["L_SD"]
    assert LossWeights(sd=0.0).terms(native=True, parallel=False) == []


def test_loss_window_averages_each_part_over_the_samples_that_get_it():
    import torch

    from training.runs.loss_window import LossWindow, loss_sums, non_finite

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
    from training.step.guard import NonFiniteError, StepGuard

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

    from training.data.batches import Prefetcher

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



@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_adapters_and_checkpoints_follow_the_umask(tmp_path, umask, mode):
    """The test above writes through open(), which keeps the temp file's mode; the safetensors writer
    replaces the file with one of mode 0o600, which a ComfyUI running as another user cannot read."""
    import os

    from adapters.file_format import save_official
    from tests.standins.encoders import make_adapter
    from training.runs.files import save_checkpoint

    old = os.umask(umask)
    try:
        ours = make_adapter(tmp_path / "ours.safetensors", "sd15", 32)
        official = save_official({"w": torch.zeros(2)}, tmp_path / "official.bin")
        checkpoint = save_checkpoint(tmp_path / "checkpoints", 3, {"step": 3})
    finally:
        os.umask(old)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in (ours, official, checkpoint)} == {
        "ours.safetensors": oct(mode), "official.bin": oct(mode), checkpoint.name: oct(mode)}


def test_a_run_folder_is_claimed_once_and_stale_locks_are_taken_over(tmp_path):
    import os
    import socket
    import subprocess

    import psutil

    from training.runs.previous import LOCK_NAME, RunFolderError, claim_run_folder, release_run_folder

    out = tmp_path / "run"
    lock = claim_run_folder(out)
    assert claim_run_folder(out) == lock and json.loads(lock.read_text())["pid"] == os.getpid()
    release_run_folder(out)
    assert not lock.exists()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = {"pid": other.pid, "host": socket.gethostname(), "started": psutil.Process(other.pid).create_time()}
        lock.write_text(json.dumps(live))
        with pytest.raises(RunFolderError, match=rf"run is in use by another run \(process {other.pid} on .*delete "
                                                 rf".*{LOCK_NAME}"):
            claim_run_folder(out)
        lock.write_text(json.dumps({**live, "host": "another-host"}))  # cannot be checked from here: refused
        with pytest.raises(RunFolderError, match="another-host"):
            claim_run_folder(out)
    finally:
        other.kill()
        other.wait()
    lock.write_text(json.dumps(live))  # its process is gone: stale
    assert claim_run_folder(out) == lock and json.loads(lock.read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]
    release_run_folder(out)

# ---- manifests: every fault at once, by file and line ------------------------------------

def test_manifest_lists_every_fault_with_file_and_line(tmp_path):
    good = json.dumps({"image": "a.png", "text": "猫", "en": "cat"}, ensure_ascii=False).encode()
    lines = [
        good,                                                                     # 1 fine
        b'{"image": "b.png", "text": "\xff\xfe", "en": "dog"}',                   # 2 not UTF-8
        b'{"image": "c.png", "text": "x", "en": ',                                # 3 bad JSON
        b'["d.png", "x", "y"]',                                                   # 4 a list
        json.dumps({"image": "e.png", "en": "e"}).encode(),                      # 5 no text
        json.dumps({"image": "", "text": "f", "en": "f"}).encode(),              # 6 empty image
        json.dumps({"image": "g.png", "text": "g", "en": "g", "kind": "x"}).encode(),  # 7 wrong kind
        json.dumps({"image": "h.png", "text": "h"}).encode(),                    # 8 parallel without en
        b"",                                                                      # 9 blank: fine
        json.dumps({"image": "i.png", "text": "i", "en": 3, "kind": "native"}).encode(),  # 10 en not text
    ]
    m = tmp_path / "m.jsonl"
    m.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(m)
    message = str(info.value)
    assert message.startswith(f"{m}: 8 faulty lines, nothing was trained")
    expected = {2: "not UTF-8 text (byte 0xff at column 29)", 3: "not valid JSON", 4: "a JSON list where an object",
                5: "field 'text' must be a non-empty string", 6: "field 'image' must be a non-empty string",
                7: "field 'kind' is 'x'", 8: "a parallel sample needs an English caption",
                10: "field 'en' must be a string"}
    for n, words in expected.items():
        assert f"{m}:{n}: {words}" in message, (n, message)
    assert f"{m}:1:" not in message and f"{m}:9:" not in message


def test_manifest_faults_are_listed_up_to_a_limit_and_a_bom_is_accepted(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text("\ufeff" + json.dumps({"image": "a.png", "text": "猫", "en": "cat"}, ensure_ascii=False) + "\n"
                 + "not json\n" * 25, encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        read_manifest(m)
    assert "25 faulty lines" in str(info.value) and str(info.value).count("not valid JSON") == 20
    assert str(info.value).endswith("... and 5 more") and f"{m}:1:" not in str(info.value)
    with pytest.raises(ManifestError, match=r"cannot read the manifest .*absent.jsonl: No such file"):
        read_manifest(tmp_path / "absent.jsonl")


# ---- images: strict decoding, limits from the header, each bad image counted once ------------

def test_a_jpeg_corrupted_in_the_middle_is_refused(tmp_path):
    from PIL import Image

    from tests.broken_training_files import corrupt_middle, jpeg_bytes, photo
    from training.data.images import IMAGE_ERRORS, decode_image

    for mode in ("L", "CMYK", "RGB"):  # the strict decoder gives Pillow's pixels
        good = jpeg_bytes(photo().convert(mode))
        decoded = decode_image(good)
        assert np.array_equal(np.asarray(decoded), np.asarray(Image.open(io.BytesIO(good)).convert("RGB"))), mode
    bad = corrupt_middle(good)
    with Image.open(io.BytesIO(bad)) as im:  # why the strict decoder: Pillow decodes it without complaint
        im.load()
    with pytest.raises(IMAGE_ERRORS, match="Corrupt JPEG data"):
        decode_image(bad)
    with pytest.raises(IMAGE_ERRORS):
        decode_image(good[: len(good) * 2 // 3])  # truncated


def test_a_png_corrupted_in_the_middle_or_truncated_is_refused():
    from tests.broken_training_files import corrupt_middle, photo
    from training.data.images import IMAGE_ERRORS, decode_image

    buf = io.BytesIO()
    photo().save(buf, "PNG")
    good = buf.getvalue()
    assert decode_image(good).size == (320, 240)
    for bad in (corrupt_middle(good, length=16), good[: len(good) // 2]):
        with pytest.raises(IMAGE_ERRORS):
            decode_image(bad)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_extreme_images_are_refused_from_the_header(tmp_path):
    """The files hold a header and no pixels: decoding them would fail as truncated, so a refusal
    that names the size shows it came from the header, before any decoding."""
    from tests.broken_training_files import header_only_png
    from training.data.sampling import Record, SkipCounter, assign_buckets
    from training.data.images import ImageRefused, decode_image, size_problem

    wide = header_only_png(tmp_path / "wide.png", 10000, 10)
    huge = header_only_png(tmp_path / "huge.png", 10000, 9000)
    fine = header_only_png(tmp_path / "fine.png", 300, 200)
    records = [Record(p, "t", "t", False, where=f"m.jsonl:{n}") for n, p in enumerate((wide, huge, fine), 1)]
    skipped = SkipCounter()
    kept, _ = assign_buckets(records, make_buckets(64, step=8), skipped)
    assert kept == records[2:]
    assert skipped.reasons == {str(wide): "size 10000x10: aspect ratio 1000.0:1 is beyond 4:1 (m.jsonl:1)",
                               str(huge): "size 10000x9000 (90 MP) is beyond 89 MP (m.jsonl:2)"}
    with pytest.raises(ImageRefused, match="aspect ratio"):
        decode_image(wide.read_bytes())
    with pytest.raises(OSError, match="truncated"):  # what decoding the same kind of file does
        decode_image(fine.read_bytes())
    assert size_problem(400, 100) is None and size_problem(401, 100) is not None


def test_skipped_images_are_counted_once_each():
    from training.data.sampling import Record, SkipCounter

    skipped = SkipCounter()
    a, b = Record(Path("a.jpg"), "t", "t", False, where="m.jsonl:3"), Record(Path("b.jpg"), "t", "t", False)
    for _ in range(3):  # three epochs
        skipped.add(a, "Corrupt JPEG data")
        skipped.add(b, OSError("broken"))
    skipped.merge([{"a.jpg": "other rank's words", "c.jpg": "file not found"}])
    assert skipped.count == 3 and a in skipped
    assert skipped.reasons == {"a.jpg": "Corrupt JPEG data (m.jsonl:3)", "b.jpg": "broken", "c.jpg": "file not found"}


def write_shards(folder: Path, sizes_per_shard: list[list[tuple[int, int]]]) -> list[str]:
    """Webdataset tar shards of plain PNGs of the given sizes (one caption each)."""
    import webdataset as wds
    from PIL import Image

    urls = []
    for n, sizes in enumerate(sizes_per_shard):
        url = str(folder / f"train-{n:03d}.tar")
        with wds.TarWriter(url) as sink:
            for k, size in enumerate(sizes):
                png = io.BytesIO()
                Image.new("RGB", size, (k * 9 % 256, 80, 160)).save(png, format="PNG")
                sink.write({"__key__": f"s{n}_{k:03d}", "png": png.getvalue(),
                            "json": json.dumps({"text": "猫", "en": "a cat"}).encode()})
        urls.append(url)
    return urls


def test_shard_ranks_get_disjoint_sample_ids_and_different_draws(tmp_path):
    """Two ranks over shards of two buckets (samples of one bucket arrive between another's):
    no id is shared within a step or over the stream, so no two samples draw the same timestep,
    noise or dropout flag; a resumed rank gets the ids it had."""
    import torch

    from training.data.sampling import ShardBatches, SkipCounter
    from training.step.distill import sample_draws

    sizes = [(64, 64), (64, 64), (64, 128), (64, 64), (64, 128), (64, 64), (64, 128), (64, 128)]
    urls = write_shards(tmp_path, [sizes, sizes[::-1]])
    buckets = make_buckets(64, step=8)
    ranks = [ShardBatches(urls, buckets, 2, SkipCounter(), world=2, rank=r).iterate() for r in range(2)]
    steps = [[next(stream) for _ in range(12)] for stream in ranks]  # three passes over the shards
    ids = [[sid for _, _, batch_ids in rank for sid in batch_ids] for rank in steps]
    assert len(set(ids[0])) == len(ids[0]) == 24 and len(set(ids[1])) == 24 and not set(ids[0]) & set(ids[1])
    for step, ((_, _, ids0), (_, _, ids1)) in enumerate(zip(*steps)):
        draws = [sample_draws(0, step, sid, torch.Size((4, 8, 8)), 0.5) for sid in ids0 + ids1]
        noises = torch.stack([noise for _, noise, _ in draws]).flatten(1)
        assert torch.cdist(noises, noises).add(torch.eye(len(draws))).min() > 0  # no two alike
    resumed = ShardBatches(urls, buckets, 2, SkipCounter(), world=2, rank=1).iterate(start=7)
    assert [next(resumed)[2] for _ in range(5)] == [batch_ids for _, _, batch_ids in steps[1][7:12]]


def test_manifest_ranks_get_disjoint_sample_ids_in_every_step():
    """A manifest sample's id is its record's index: the ranks' slices of a global batch never
    share one, over several epochs; a resumed rank gets the ids it had."""
    from training.data.sampling import ManifestBatches, Record

    records = [Record(Path(f"{i}.png"), "猫", "a cat", False) for i in range(30)]
    buckets = [(64, 64)] * 20 + [(64, 128)] * 10
    ranks = [ManifestBatches(records, buckets, 3, world=2, rank=r, seed=5).iterate() for r in range(2)]
    steps = [[next(stream)[2] for _ in range(20)] for stream in ranks]  # four epochs of 5 global batches
    assert all(len(set(a) | set(b)) == 6 for a, b in zip(*steps))
    resumed = ManifestBatches(records, buckets, 3, world=2, rank=1, seed=5).iterate(start=13)
    assert [next(resumed)[2] for _ in range(7)] == steps[1][13:]


def test_captions_over_the_window_are_counted_with_tokens_cut():
    from adapters.demo_files import bert_tokenizer
    from training.data.captions import CaptionWindow
    from training.data.sampling import Record

    window = CaptionWindow(bert_tokenizer(), 12, "tiny-bert")
    texts = ["猫", "一只猫" * 5, "狗" * 30]  # 3, 17 and 32 tokens with [CLS] and [SEP]
    window.measure([Record(Path(f"{i}.png"), t, None, True, where=f"m.jsonl:{i}") for i, t in enumerate(texts, 1)])
    assert window.summary() == {"window": 12, "checked": 3, "over_window": 2, "tokens_cut": 5 + 20,
                                "most_tokens_cut": 20, "examples": ["m.jsonl:2: 17 tokens", "m.jsonl:3: 32 tokens"]}
    assert window.message().startswith("2 of 3 captions are longer than the language encoder's window of 12 tokens")
    window.merge([{"checked": 10, "over_window": 1, "tokens_cut": 40, "most_tokens_cut": 40, "examples": ["x: 52"]}])
    assert (window.checked, window.over, window.tokens_cut, window.most_cut) == (13, 3, 65, 40)


# ---- run folders: never mix two runs, clean interrupted writes, keep a few checkpoints -------

def previous_run(folder: Path) -> None:
    """The files a finished run leaves, plus files of the user's own."""
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "previews").mkdir()
    for name in ("adapter.safetensors", "log.jsonl", "loss.png", "checkpoints/step_0000010.pt",
                 "checkpoints/step_0000020.pt", "previews/step_0000010.png", "previews/final.png"):
        (folder / name).write_bytes(b"old run")
    (folder / "summary.json").write_text(json.dumps({"adapter": str(folder / "adapter.safetensors")}))
    (folder / "notes.txt").write_text("mine")
    (folder / "previews" / "my_sketch.png").write_bytes(b"mine")
    (folder / "checkpoints" / "keep_me.pt").write_bytes(b"mine")


def test_a_new_run_refuses_a_folder_holding_a_previous_run(tmp_path):
    from training.runs.previous import RunFolderError, check_run_folder, prepare_run_folder, release_run_folder

    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    check_run_folder(out, "adapter.safetensors")  # the user's own files are no previous run
    previous_run(tmp_path / "other")
    previous_run(out := tmp_path / "run2")
    with pytest.raises(RunFolderError, match=r"holds a previous run \(adapter.safetensors, log.jsonl, loss.png, "
                                             r"summary.json \.\.\.\).*--resume .*--overwrite"):
        check_run_folder(out, "adapter.safetensors")
    with pytest.raises(RunFolderError, match="is not a checkpoint of this folder"):
        check_run_folder(out, "adapter.safetensors", resume=tmp_path / "other")
    check_run_folder(out, "adapter.safetensors", resume=out)  # continuing it is fine
    check_run_folder(out, "adapter.safetensors", resume=out / "checkpoints" / "step_0000010.pt")
    prepare_run_folder(out, "adapter.safetensors", overwrite=True)
    release_run_folder(out)  # as the run does when it ends
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert left == ["checkpoints", "checkpoints/keep_me.pt", "notes.txt", "previews", "previews/my_sketch.png"]
    check_run_folder(out, "adapter.safetensors")


def test_overwrite_finds_an_adapter_written_under_another_name(tmp_path):
    from training.runs.previous import previous_run_files, prepare_run_folder, release_run_folder

    out = tmp_path / "run"
    out.mkdir()
    (out / "pea_zh.safetensors").write_bytes(b"old")
    (out / "summary.json").write_text(json.dumps({"adapter": str(out / "pea_zh.safetensors")}))
    (out / "other.safetensors").write_bytes(b"the user's")
    assert previous_run_files(out, "adapter.safetensors") == [out / "pea_zh.safetensors", out / "summary.json"]
    prepare_run_folder(out, "adapter.safetensors", overwrite=True)
    release_run_folder(out)
    assert [p.name for p in out.iterdir()] == ["other.safetensors"]


def test_temp_files_of_interrupted_writes_are_cleaned_at_start(tmp_path, caplog):
    import os
    import time

    from tests.broken_training_files import interrupted_writes
    from training.runs.previous import STALE_AFTER_S, prepare_run_folder, release_run_folder

    out, cache = tmp_path / "run", tmp_path / "cache"
    interrupted_writes(out / "adapter.safetensors", out / "checkpoints" / "step_0000100.pt",
                       cache / "latents" / "ab" / "abcdef.pt", cache / "teacher" / "cd" / "cdef.safetensors")
    old = time.time() - STALE_AFTER_S - 60
    os.utime(next((cache / "latents" / "ab").iterdir()), (old, old))
    (out / ".hidden.tmp").write_text("not ours: no unique part")
    (out / "notes.tmp").write_text("not ours: not hidden")
    with caplog.at_level("WARNING"):
        prepare_run_folder(out, "adapter.safetensors", cache_dir=cache)
    assert "removed 3 temp file(s) left by interrupted writes" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == [".hidden.tmp", ".pea-run.lock", "checkpoints", "notes.tmp"]
    assert list((out / "checkpoints").iterdir()) == [] and list((cache / "latents" / "ab").iterdir()) == []
    fresh = list((cache / "teacher" / "cd").iterdir())  # another run sharing the cache may be writing it
    assert len(fresh) == 1 and fresh[0].name.startswith(".cdef.safetensors.")
    release_run_folder(out)


def test_torn_log_line_is_dropped_on_resume_and_the_log_rewritten(tmp_path, caplog):
    from training.runs.files import RunLog

    path = tmp_path / "log.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (1, 2, 3, 4)]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"step": 5, "loss": 0.2')
    with caplog.at_level("WARNING"):
        log = RunLog(path, resume_step=3)
    assert "dropping 1 unreadable line(s) (5)" in caplog.text
    assert path.read_text() == "\n".join(lines[:3]) + "\n"
    log.write({"step": 4, "loss": 0.5})
    assert [e["step"] for e in log.entries()] == [1, 2, 3, 4]
    path.write_bytes(b'{"step": 1}\n\x00\x00\x00\x00\n[1, 2]\n{"step": 2}\n')  # a zero-filled block, a list
    assert [e["step"] for e in RunLog(path, resume_step=2).entries()] == [1, 2]


def test_older_checkpoints_are_pruned_never_the_newest(tmp_path):
    from training.runs.files import checkpoints, find_checkpoint, prune_checkpoints

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for step in (500, 1000, 1500, 9_999_999, 10_000_000):
        (folder / f"step_{step:07d}.pt").write_bytes(b"x")
    (folder / "step_final.pt").write_bytes(b"not a step")
    assert prune_checkpoints(folder, 0) == []
    assert [p.name for p in prune_checkpoints(folder, 2)] == ["step_0000500.pt", "step_0001000.pt", "step_0001500.pt"]
    assert [s for s, _ in checkpoints(folder)] == [9_999_999, 10_000_000]
    assert find_checkpoint(tmp_path) == folder / "step_10000000.pt"
    prune_checkpoints(folder, 1)
    assert sorted(p.name for p in folder.iterdir()) == ["step_10000000.pt", "step_final.pt"]


def test_resuming_before_later_checkpoints_is_refused_unless_overwrite(tmp_path):
    from training.runs.previous import RunFolderError, check_later_checkpoints

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for step in (3, 6, 9):
        (folder / f"step_{step:07d}.pt").write_bytes(b"x")
    check_later_checkpoints(folder, 9, overwrite=False)
    with pytest.raises(RunFolderError, match=r"resuming at step 3, but .* holds later checkpoints "
                                             r"\(step_0000006.pt, step_0000009.pt\)"):
        check_later_checkpoints(folder, 3, overwrite=False)
    check_later_checkpoints(folder, 3, overwrite=True)
    assert [p.name for p in folder.iterdir()] == ["step_0000003.pt"]


@pytest.mark.parametrize("flags,refused", [(["--resume", "runs/x"], "--resume"),
                                           (["--save-every", "5", "--manifest", "m.jsonl"], "--manifest, --save-every"),
                                           (["--checkpoint", "sd.safetensors", "--keep-checkpoints", "1"],
                                            "--checkpoint, --keep-checkpoints")])
def test_demo_refuses_flags_it_cannot_honour(flags, refused, capsys):
    from training.train_adapter import main

    with pytest.raises(SystemExit) as info:
        main(["--demo", "--steps", "3", "--output", "o", "--overwrite", *flags])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"--demo trains its own miniature world and cannot honour {refused};" in err
    assert "it takes only --output, --steps, --seed, --overwrite, --cpu" in err


def test_world_proof_merges_seeds_run_side_by_side(tmp_path, capsys):
    from training.miniworld.proof import merge_proofs

    def run(folder: str, seed: int, teacher: float, pea: float, batch: int = 32) -> Path:
        acc = lambda v: {"color": v, "shape": v, "place": v, "size": v, "mean": v, "all": v}  # noqa: E731
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "proof.json").write_text(json.dumps(
            {"family": "sd15", "seeds": [seed], "steps": 1200, "batch": batch,
             "held_out_prompts": 39, "samples_per_prompt": 2, "lantern_prompts": 0,
             "lantern_samples_per_prompt": 8, "judge_on_drawn_images": acc(1.0), "minutes": 30.0,
             "rows": {"teacher, English prompts": [acc(teacher)], "PEA as published (zh)": [acc(pea)]}}))
        return tmp_path / folder

    folders = [run("b", 1, 0.9, 0.6), run("a", 0, 0.7, 0.8)]
    (folders[1] / "samples.png").write_bytes(b"seed 0's grid")
    merged = merge_proofs(folders, tmp_path / "table")
    assert merged["seeds"] == [0, 1] and merged["minutes"] == 60.0
    assert [acc["mean"] for acc in merged["rows"]["PEA as published (zh)"]] == [0.8, 0.6]  # in seed order
    teacher = merged["summary"]["teacher, English prompts"]["mean"]
    assert teacher["mean"] == pytest.approx(0.8) and teacher["std"] == pytest.approx(0.1414, abs=1e-4)
    assert json.loads((tmp_path / "table" / "proof.json").read_text())["summary"] == merged["summary"]
    assert (tmp_path / "table" / "samples.png").read_bytes() == b"seed 0's grid"
    assert "2 seed(s)" in capsys.readouterr().out
    with pytest.raises(PEAError, match="repeat a seed"):
        merge_proofs([folders[0], folders[0]], tmp_path / "again")
    other = run("c", 2, 0.8, 0.7, batch=128)
    with pytest.raises(PEAError, match=r"c.proof\.json has batch 128, .*a.proof\.json 32: merge runs made alike"):
        merge_proofs([*folders, other], tmp_path / "mixed")
    assert not (tmp_path / "mixed" / "proof.json").exists()


def test_the_pretrained_student_encoder_reads_both_languages_alike(tmp_path):
    """The shipped pretrained encoder (the SDXL world's students') puts a held-out combination's
    Chinese and Russian captions next to each other (measured 1.00 of 39, the initialised encoder
    0.03); a file that does not fit is refused by name."""
    import safetensors.torch
    import transformers

    from training.miniworld.encoder import SHIPPED_ENCODER, load_text_tower, make_student_encoder, text_features
    from training.miniworld.world import read_pairs

    held = [p for p in read_pairs() if p["held_out"] and not p["native"]]

    def cross_lingual(folder: Path) -> float:
        model = transformers.ChineseCLIPModel.from_pretrained(str(folder))
        tok = transformers.BertTokenizerFast.from_pretrained(str(folder))
        with torch.no_grad():
            zh, ru = (text_features(model, tok, [p[lang] for p in held]) for lang in ("zh", "ru"))
        return (zh @ ru.T).argmax(1).eq(torch.arange(len(held))).float().mean().item()

    assert cross_lingual(make_student_encoder(tmp_path / "pretrained", pretrained=True)) > 0.9
    initialised = make_student_encoder(tmp_path / "initialised", pretrained=False)
    assert cross_lingual(initialised) < 0.2
    model = transformers.ChineseCLIPModel.from_pretrained(str(initialised))
    state = safetensors.torch.load_file(str(SHIPPED_ENCODER))
    state["text_model.embeddings.word_embeddings.weight"] = state["text_model.embeddings.word_embeddings.weight"][:-1]
    safetensors.torch.save_file(state, str(tmp_path / "other.safetensors"))
    with pytest.raises(PEAError, match=r"other\.safetensors: does not fit the world's student encoder.*--write-encoder"):
        load_text_tower(model, tmp_path / "other.safetensors")


@pytest.mark.parametrize("field", ["steps", "batch_size", "grad_accum"])
def test_train_config_refuses_counts_below_one(tmp_path, field):
    from training.config import TrainConfig

    with pytest.raises(PEAError, match=f"{field} must be 1 or more, got -3"):
        TrainConfig(output=tmp_path, **{field: -3})
    assert getattr(TrainConfig(output=tmp_path, **{field: 1}), field) == 1
