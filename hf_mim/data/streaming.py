"""`hf-mim pretrain --streaming`: pretraining from a `datasets.IterableDataset` (a Hub id, WebDataset tar shards,
parquet or arrow files), read as it trains, without preparing the data on disk first.

How the stream is cut, shuffled and resumed:
- Every DataLoader worker of every process is a "node" of `datasets.distributed.split_dataset_by_node`: node
  `rank * workers + worker` of `processes * workers`. It reads whole shards when the shard count is a multiple of
  the node count, else every node reads all shards and keeps one example in `processes * workers` (datasets' two
  strategies). The split is ours, not datasets' own per-worker split, so that a worker's data follows from its role
  and not from the id the DataLoader gave it (see "resume").
- Shuffle: datasets' shard-order shuffle and shuffle buffer, seeded with `--seed`, reshuffled every epoch by
  `set_epoch`. Each node's stream is endless: when its part of the data ends it starts its next epoch. The run is
  `--max-steps` long and every process takes exactly that many steps, whatever its share of the data, so no
  process finishes an epoch early and waits in a collective for the others (datasets#6623, #5961).
- Each sample carries its stream position (worker, epoch, examples read in that epoch); the training loop keeps
  the latest per worker, and a checkpoint holds every process's. On resume each worker reads its epoch again up
  to that position without decoding it, and the DataLoader's round robin over workers is rotated to where it
  stood, so a resumed run trains on exactly the samples, in the order, of an uninterrupted one. datasets' own
  `state_dict` is not used: it drops the shuffle buffer's content on resume (its documentation says so), so a
  resumed run would lose those samples and draw others. The price: a resume reads up to one epoch of each
  worker's records again (reading, not decoding).
- Each sample's augmentation and masks are drawn from the generator of (seed, epoch, a number unique to the
  sample's node and position), so they too are the same after a resume.
"""

from __future__ import annotations

import logging

import datasets
import torch
from datasets.distributed import split_dataset_by_node

from ..errors import DatasetError
from .pipeline import SamplePipeline

logger = logging.getLogger(__name__)


def known_size(stream: datasets.IterableDataset, split: str) -> int | None:
    """The number of examples the dataset's metadata states for `split`, if any (a stream cannot count itself)."""
    splits = getattr(stream.info, "splits", None) or {}
    info = splits.get(split) if hasattr(splits, "get") else None
    return getattr(info, "num_examples", None) or None


def stream_features(stream: datasets.IterableDataset) -> datasets.Features:
    """The stream's features, reading its first example when the metadata has none."""
    if stream.features is None:
        stream = stream._resolve_features()
    if stream.features is None:
        raise DatasetError("the stream's columns could not be read from its first example")
    return stream.features


def workers_for(num_shards: int, num_processes: int, requested: int) -> int:
    """DataLoader workers per process: `requested`, lowered to the largest count for which every worker of every
    process reads whole shards (the shard count a multiple of processes x workers), if one of at least half the
    requested count exists. Otherwise `requested` stays, and each worker reads every shard and keeps its share of
    the examples. 0 (read in the main process) stays 0."""
    if requested == 0:
        return 0
    for workers in range(requested, 0, -1):
        if num_shards % (num_processes * workers) == 0:
            if 2 * workers >= requested:
                return workers
            break
    return requested


class StreamingImages(torch.utils.data.IterableDataset):
    """One process's endless stream of decoded, augmented samples, with each sample's stream position.

    `stream`: the whole dataset as an IterableDataset, already shuffled with the run's seed and with image decoding
    off. `transform.sample` decodes, augments and draws the method's inputs. `workers`: the DataLoader's
    `num_workers` (0 reads in the main process, as one worker). `resume_from(positions, batches)` sets where each
    worker starts; call it before the loader is iterated."""

    def __init__(
        self,
        stream: datasets.IterableDataset,
        image_column: str,
        transform: SamplePipeline,
        rank: int,
        num_processes: int,
        workers: int,
    ):
        self.stream, self.image_column, self.transform = stream, image_column, transform
        self.rank, self.num_processes, self.workers = rank, num_processes, max(workers, 1)
        self.start = [[0, 0] for _ in range(self.workers)]  # per worker: [epoch, examples read in it]
        self.rotation = 0

    def node(self, worker: int) -> datasets.IterableDataset:
        """The part of the data worker `worker` of this process reads."""
        return split_dataset_by_node(self.stream, self.rank * self.workers + worker, self.num_processes * self.workers)

    def resume_from(self, positions: list, batches: int) -> None:
        """Start each worker where `positions` (per worker: [epoch, examples read]) says, after `batches` batches
        taken from this process's loader: the loader's round robin then starts at the worker whose turn was next."""
        if len(positions) != self.workers:
            raise ValueError(
                f"the checkpoint's stream has {len(positions)} workers per process, this run {self.workers}"
            )
        self.start = [list(p) for p in positions]
        self.rotation = batches % self.workers

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        # The DataLoader takes batches from its workers in turn, from worker 0; after a resume the turn belongs to
        # the worker `rotation` places on, so worker id 0 plays that worker's part.
        worker = ((info.id if info else 0) + self.rotation) % self.workers
        node = self.node(worker).decode(False)  # the transform decodes, so a bad file is skipped, not raised
        number = self.rank * self.workers + worker
        nodes = self.num_processes * self.workers
        epoch, done = self.start[worker]
        while True:
            node.set_epoch(epoch)
            read = 0
            for batch in node.iter(batch_size=64):
                values = batch[self.image_column]
                keys = batch.get("__key__") or [None] * len(values)  # WebDataset's sample names, for the skip log
                for value, key in zip(values, keys, strict=True):
                    read += 1
                    if read <= done:  # replaying the epoch up to the resume point: read, not decoded
                        continue
                    item = self.transform.sample(value, (read - 1) * nodes + number, epoch, name=key)
                    item["stream_position"] = (worker, epoch, read)
                    yield item
            if read == 0:
                raise DatasetError(f"worker {worker} of process {self.rank} got no example of the data in an epoch")
            epoch, done = epoch + 1, 0


def check_every_node_has_data(streaming: StreamingImages, accelerator) -> None:
    """Before training: every worker of every process has at least one example, or all processes stop with one
    error (an empty node would otherwise leave its process spinning and the others waiting in a collective)."""
    empty = [w for w in range(streaming.workers) if next(iter(streaming.node(w).decode(False).iter(1)), None) is None]
    count = torch.tensor(float(len(empty)), device=accelerator.device)
    if accelerator.reduce(count, "sum").item() > 0:
        raise DatasetError(
            f"the data has too few examples or shards for {streaming.num_processes} process(es) x "
            f"{streaming.workers} worker(s): some get nothing. Use fewer --num-workers or processes"
        )


def streaming_loader(args, stream, image_column: str, transform, collator, accelerator):
    """(StreamingImages, DataLoader) of this process. The loader is not given to `accelerator.prepare`: each
    process already reads its own part of the stream, and accelerate would split or dispatch it once more."""
    stream = stream.select_columns([c for c in (image_column, "__key__") if c in stream_features(stream)])
    stream = stream.shuffle(seed=args.seed, buffer_size=args.shuffle_buffer)
    world = accelerator.num_processes
    workers = workers_for(stream.num_shards, world, args.num_workers)
    if stream.num_shards % (world * max(workers, 1)) and accelerator.is_main_process:
        logger.warning(
            "%d shards for %d process(es) x %d worker(s): every worker reads every shard and keeps its share of the "
            "examples. A shard count that is a multiple of processes x workers reads each shard once",
            stream.num_shards,
            world,
            max(workers, 1),
        )
    images = StreamingImages(stream, image_column, transform, accelerator.process_index, world, workers)
    loader = torch.utils.data.DataLoader(
        images, batch_size=args.batch_size, num_workers=workers, collate_fn=collator, prefetch_factor=None
    )
    return images, loader


__all__ = [
    "StreamingImages",
    "check_every_node_has_data",
    "known_size",
    "stream_features",
    "streaming_loader",
    "workers_for",
]
