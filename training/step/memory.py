"""What a training step keeps in memory between its forward and its backward pass."""
from __future__ import annotations

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class RetainedTensors(TorchDispatchMode):
    """Counts the bytes of the tensors created inside the block that are still alive afterwards.

    Run around a forward pass (up to the loss), that is what autograd keeps for backward: the
    tensors saved by each operation, and also what ``torch.utils.checkpoint`` keeps (its region
    inputs, the outputs its selective policy caches), which ``saved_tensors_hooks`` never see.
    Storages are counted once however many views share them; weights and inputs that existed
    before the block are not counted. Eager code only (compiled graphs allocate below dispatch).
    """

    def __init__(self):
        super().__init__()
        self._storages: dict[StorageWeakRef, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {StorageWeakRef(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                ref = StorageWeakRef(t.untyped_storage())
                if ref not in inputs:  # new memory, not a view of (or an in-place write to) an input
                    self._storages.setdefault(ref, t.untyped_storage().nbytes())
        return out

    def alive_bytes(self) -> int:
        """Bytes of the storages created in the block that have not been freed."""
        return sum(n for ref, n in self._storages.items() if not ref.expired())
