"""`hf-mim pretrain --streaming` and data shards (WebDataset tar, parquet): how the stream is split over processes
and workers, reshuffled per epoch, resumed exactly, and trained on by several processes that own unequal shares."""

from __future__ import annotations

import glob
import itertools
import json

import datasets
import pytest
import torch

from hf_mim.data.images import ImageAugmentation
from hf_mim.data.pipeline import SamplePipeline
from hf_mim.data.sources import DatasetError, load_pretraining_dataset, local_data_files
from hf_mim.data.streaming import StreamingImages, check_every_node_has_data, workers_for

from .images import write_webdataset
from .launch import two_processes, two_processes_killed_after_checkpoint
from .test_training import assert_same_weights, method_flags, run_cli, weights

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def stream_of(folder, rank=0, world=1, workers=0, buffer=8):
    files = sorted(glob.glob(str(folder / "*.tar")))
    raw = datasets.load_dataset("webdataset", data_files=files, split="train", streaming=True)
    raw = raw.select_columns(["jpg", "__key__"]).shuffle(seed=0, buffer_size=buffer)
    transform = SamplePipeline("jpg", ImageAugmentation(8, [0.5] * 3, [0.5] * 3), seed=0)
    return StreamingImages(raw, "jpg", transform, rank, world, workers)


def taken(images: StreamingImages, workers: int, batches: int, batch_size: int = 3):
    """The first `batches` batches of a loader over `images`: (sample names, stream position after the batch)."""

    def collate(items):
        return [item["name"] for item in items], items[-1]["stream_position"]

    loader = torch.utils.data.DataLoader(images, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    return list(itertools.islice(loader, batches))


def node_keys(images: StreamingImages, worker: int, epoch: int) -> list[str]:
    node = images.node(worker).decode(False)
    node.set_epoch(epoch)
    return [key for batch in node.iter(batch_size=16) for key in batch["__key__"]]


@pytest.mark.parametrize("shards", [3, 4])  # 3: no division over 2 x 2 nodes (one example in 4 each); 4: one shard each
def test_processes_and_workers_split_each_epoch_into_disjoint_parts_and_reshuffle(tmp_path, shards):
    keys = write_webdataset(tmp_path, shards=shards, per_shard=5)
    nodes = [(stream_of(tmp_path, rank, 2, 2), worker) for rank in (0, 1) for worker in (0, 1)]
    parts = {epoch: [node_keys(images, worker, epoch) for images, worker in nodes] for epoch in (0, 1)}
    for epoch, nodes in parts.items():
        seen = [k for node in nodes for k in node]
        assert sorted(seen) == sorted(keys), epoch  # every sample once per epoch, on exactly one node
    assert [k for n in parts[0] for k in n] != [k for n in parts[1] for k in n]  # epoch 1 is another order


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("resume_after", [3, 7])  # 3: mid round robin (rotation 1 of 2 workers); 7: in epoch 2+
def test_a_resumed_stream_continues_with_the_uninterrupted_streams_samples(tmp_path, workers, resume_after):
    write_webdataset(tmp_path, shards=3, per_shard=5)
    straight = taken(stream_of(tmp_path, 1, 2, workers), workers, 12)
    epochs = {position[1] for _, position in straight}
    assert len(epochs) >= 3  # the sequence crosses epochs (each node holds 3-4 of the 15 samples)

    # what the training loop keeps: the position of each worker's latest batch
    positions = [[0, 0] for _ in range(max(workers, 1))]
    for _, (worker, epoch, read) in straight[:resume_after]:
        positions[worker] = [epoch, read]
    resumed_images = stream_of(tmp_path, 1, 2, workers)
    resumed_images.resume_from(positions, resume_after)
    resumed = taken(resumed_images, workers, 12 - resume_after)
    assert [names for names, _ in resumed] == [names for names, _ in straight[resume_after:]]


def test_workers_are_lowered_to_read_whole_shards_only_when_that_keeps_half_of_them():
    assert workers_for(num_shards=64, num_processes=8, requested=8) == 8
    assert workers_for(num_shards=48, num_processes=8, requested=8) == 6  # 48 = 8 x 6
    assert workers_for(num_shards=3, num_processes=2, requested=2) == 2  # no divisor: every worker reads all
    assert workers_for(num_shards=10, num_processes=1, requested=4) == 2  # 2 of 4 is half: kept
    assert workers_for(num_shards=7, num_processes=1, requested=4) == 4  # 1 of 4 is less than half
    assert workers_for(num_shards=4, num_processes=2, requested=0) == 0


def test_a_node_without_examples_is_refused_before_training(tmp_path):
    from accelerate import Accelerator

    write_webdataset(tmp_path, shards=1, per_shard=2)
    with pytest.raises(DatasetError, match="too few examples or shards"):
        check_every_node_has_data(stream_of(tmp_path, rank=0, world=1, workers=3), Accelerator(cpu=True))
    check_every_node_has_data(stream_of(tmp_path, rank=0, world=1, workers=2), Accelerator(cpu=True))


def test_shard_folders_and_globs_resolve_to_their_builder(tmp_path):
    write_webdataset(tmp_path / "wds", shards=2, per_shard=3)
    assert local_data_files(str(tmp_path / "wds"))[0] == "webdataset"
    builder, files = local_data_files(str(tmp_path / "wds" / "train-00[0].tar"))
    assert builder == "webdataset" and len(files) == 1
    dataset, description = load_pretraining_dataset(str(tmp_path / "wds"))
    assert len(dataset) == 6 and isinstance(dataset.features["jpg"], datasets.Image) and "webdataset" in description
    (tmp_path / "wds" / "extra.parquet").write_bytes(b"")
    with pytest.raises(DatasetError, match="all be of one kind"):
        local_data_files(str(tmp_path / "wds"))
    with pytest.raises(DatasetError, match="no file matches"):
        local_data_files(str(tmp_path / "nothing-*.tar"))


def test_webdataset_shards_train_map_style_and_parquet_shards_stream(tmp_path):
    write_webdataset(tmp_path / "wds", shards=2, per_shard=6)
    run = run_cli([*method_flags(tmp_path, "mae"), "--dataset", str(tmp_path / "wds"), "--max-steps", "2",
                   "--batch-size", "4", "--output-dir", str(tmp_path / "a")])  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "a" / "training_summary.json").read_text())
    assert summary["num_samples"] == 12 and summary["image_column"] == "jpg" and not summary["streaming"]

    digits = load_pretraining_dataset("digits")[0].select(range(40))
    (tmp_path / "pq").mkdir()
    for shard in range(2):
        digits.shard(2, shard).to_parquet(str(tmp_path / "pq" / f"part-{shard}.parquet"))
    run = run_cli([*method_flags(tmp_path, "mae"), "--dataset", str(tmp_path / "pq" / "*.parquet"), "--streaming",
                   "--max-steps", "3", "--batch-size", "16", "--output-dir", str(tmp_path / "b")])  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "b" / "training_summary.json").read_text())
    assert summary["streaming"] and summary["steps"] == 3 and "parquet" in summary["dataset"]
    assert (tmp_path / "b" / "reconstruction.png").exists()  # pictures from the stream's first images


@pytest.mark.parametrize(
    "flags, message",
    [([], "pass --max-steps"), (["--max-steps", "2", "--epochs", "1"], "trains by --max-steps"),
     (["--max-steps", "2", "--shuffle-buffer", "0"], "shuffle-buffer"),
     (["--max-steps", "2", "--dataset", "./no/such/shards"], "dataset path not found")],
)  # fmt: skip
def test_streaming_flags_are_checked(tmp_path, flags, message):
    run = run_cli(["--streaming", *flags, "--output-dir", str(tmp_path / "out")])
    assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr


def test_streaming_on_two_processes_killed_and_resumed_ends_with_the_uninterrupted_weights(tmp_path):
    """The issue's "done when": shards that do not divide over the processes (each rank owns another number of
    examples, so ranks pass epoch ends at different steps), a corrupt sample skipped and counted, 2 workers per
    process, killed after a checkpoint and resumed: the weights and losses of an uninterrupted run."""
    write_webdataset(tmp_path / "wds", shards=3, per_shard=7, bad=("s1_0003",))
    flags = [*method_flags(tmp_path, "mae"), "--dataset", str(tmp_path / "wds"), "--streaming", "--max-steps", "8",
             "--batch-size", "4", "--num-workers", "2", "--checkpointing-steps", "3",
             "--shuffle-buffer", "5"]  # fmt: skip
    straight = two_processes("pretrain", ["--output-dir", str(tmp_path / "a"), *flags])
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = two_processes_killed_after_checkpoint(6, ["--output-dir", str(tmp_path / "b"), *flags], tmp_path)
    assert killed.returncode != 0 and not (tmp_path / "b" / "model.safetensors").exists()
    resume = ["--output-dir", str(tmp_path / "b"), *flags, "--resume-from-checkpoint", "latest"]
    resumed = two_processes("pretrain", resume)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "step-6" in resumed.stderr

    summaries = [json.loads((tmp_path / d / "training_summary.json").read_text()) for d in "ab"]
    assert summaries[0]["ranks_in_sync"] and summaries[1]["ranks_in_sync"]
    assert summaries[0]["loss_history"] == summaries[1]["loss_history"]
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))
    # 8 steps x 4 images x 2 processes = 64 samples of 21: every sample was met, the corrupt one skipped
    assert list(summaries[0]["skipped_images"]) == ["s1_0003"]
    state = json.loads((tmp_path / "a" / "checkpoints" / "step-6" / "trainer_state.json").read_text())
    epochs = {epoch for rank in state["stream_positions"] for epoch, _ in rank}
    assert len(epochs) > 1  # the workers stood in different epochs: their shares differ
