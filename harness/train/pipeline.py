"""The input pipeline: a grain dataset over record keys, sharded by process, with
checkpointable iterator state.

Each step reads the next `batch_size` record keys; host i of n reads the i-th
block of `batch_size / n` of them (grain: `range(...).batch(local)[i::n]`), and
the blocks become batches through the data source's `records(keys)`. Where the
pipeline stands is grain's iterator state, a small JSON dict saved in every
checkpoint, so an exact resume comes from that state rather than from the step count,
as it would with any real (file-backed, shuffled) pipeline.

    pipeline = InputPipeline(dataset)
    batch = next(pipeline); state = pipeline.state()   # ... later, after a restart:
    pipeline.restore(state)
"""

from __future__ import annotations

import json
from typing import Any, Iterator

import grain

from harness.mock.data import Batch, MockDataset

MAX_STATE_BYTES = 64 << 10  # a saved iterator state is untrusted input: bounded


class PipelineStateError(ValueError):
    """A saved iterator state this pipeline can't take."""


class InputPipeline:
    """This host's batches, in order, from a position that can be saved and restored."""

    def __init__(self, dataset: MockDataset):
        # Every key a sample id (int32) can hold: the mock source never runs out.
        batch = dataset.spec.batch_size
        keys = grain.MapDataset.range((2**31 - 1) // batch * batch)
        blocks = keys.batch(dataset.local_batch_size)[dataset.process_index :: dataset.process_count]
        self._dataset = blocks.map(dataset.records)
        # No grain threads: harness/train/prefetch.py reads ahead, a bounded number of batches.
        self._iterator = iter(self._dataset.to_iter_dataset(grain.ReadOptions(num_threads=0)))

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        return next(self._iterator)

    def state(self) -> dict[str, Any]:
        """Where the pipeline stands: the next batch `next()` will return."""
        return self._iterator.get_state()

    def restore(self, state: Any) -> None:
        """Continues from a `state()` saved earlier (read from a checkpoint, so checked)."""
        if not isinstance(state, dict) or len(json.dumps(state)) > MAX_STATE_BYTES:
            raise PipelineStateError(f"not an input pipeline state: {str(state)[:200]}")
        index = state.get("next_index")
        if set(state) != {"next_index"} or type(index) is not int or not 0 <= index <= len(self._dataset):
            raise PipelineStateError(f"input pipeline state {str(state)[:200]} is not a position in "
                                     f"this pipeline's {len(self._dataset)} batches")
        self._iterator.set_state(state)
