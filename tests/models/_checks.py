"""Assertions shared by the model tests (imported by name: pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

import torch


def assert_same_weights(model: torch.nn.Module, loaded: torch.nn.Module, name: str) -> None:
    """The save/load contract, exactly: the same tensors (values, dtypes), the same trainable set, and storage that
    ``load_model`` re-owned (contiguous, 64-byte aligned, not a view into the file mapping)."""
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys()
    different = [k for k in sd if sd[k].dtype != sd2[k].dtype or not torch.equal(sd[k], sd2[k])]
    assert not different, f"{name}: {different[:8]} differ after save/load"
    assert [p.requires_grad for p in model.parameters()] == [p.requires_grad for p in loaded.parameters()]
    tensors = list(loaded.parameters()) + list(loaded.buffers())
    unowned = [t.shape for t in tensors if t.data_ptr() % 64 or not t.is_contiguous() or t.storage_offset()]
    assert not unowned, f"{name}: {len(unowned)} loaded tensors still sit in the file mapping's storage"


def assert_same_outputs(expected: torch.Tensor, actual: torch.Tensor) -> None:
    """Outputs of the saved and the reloaded model.

    With equal weights in equally owned storage they are bit-identical in practice; the tolerance (1e-6, far below the
    uint8 probability step of 1/254) only covers what is not a contract of PyTorch's CPU kernels: bitwise equality of
    two model objects' float results (MKL/oneDNN may choose kernels by thread count and memory layout).
    """
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=1e-6)
