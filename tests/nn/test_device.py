"""Device choice, mixed precision, channels-last memory and torch threads: one home."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import liverfat
from liverfat.nn import device as D


def test_pick_device():
    assert D.pick_device("cpu") == torch.device("cpu")
    assert D.pick_device("cuda:1") == torch.device("cuda", 1)  # passed through, not checked
    assert D.pick_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_mixed_precision_and_scaler_are_no_ops_off_cuda():
    cpu = torch.device("cpu")
    a = torch.rand(4, 4)
    with D.mixed_precision(cpu):
        assert (a @ a).dtype == torch.float32
    scaler = D.grad_scaler(cpu)
    assert not scaler.is_enabled()
    loss = torch.tensor(2.5)
    assert scaler.scale(loss) is loss


def test_channels_last_for_modules_and_batches():
    batch = D.channels_last(torch.rand(2, 3, 5, 7))
    assert batch.is_contiguous(memory_format=torch.channels_last)
    conv = nn.Conv2d(3, 4, 3)
    assert D.channels_last(conv) is conv
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_set_torch_threads():
    previous = torch.get_num_threads()
    try:
        D.set_torch_threads(1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)


def test_torch_threads_gives_the_previous_count_back_even_after_an_error():
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with D.torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), D.torch_threads(1):
            raise RuntimeError("a failed registration")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


#: torch calls that choose or configure where and how torch runs.
_CALLS = {"is_available", "set_num_threads", "autocast", "GradScaler", "channels_last"}


def test_only_liverfat_nn_device_chooses_devices_or_sets_threads():
    """No engine keeps its own device chooser, AMP set-up or torch thread setter: deep's
    training and the atlas torch backend both go through :mod:`liverfat.nn.device`."""
    root = Path(liverfat.__file__).parent
    home = root / "nn" / "device.py"
    found = []
    for path in sorted(root.rglob("*.py")):
        if path == home:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.attr] if isinstance(node, ast.Attribute) else []
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch"):
                names = [alias.name for alias in node.names]  # from torch.amp import GradScaler
            found += [f"{path.relative_to(root)}:{node.lineno} {n}" for n in names if n in _CALLS]
    assert not found, found


@pytest.mark.gpu
def test_cuda_mixed_precision_and_scaler():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device in this environment")
    cuda = D.pick_device()
    assert cuda == torch.device("cuda")
    a = torch.rand(8, 8, device=cuda)
    dtype = D.autocast_dtype(cuda)
    assert dtype == torch.bfloat16  # every GPU lent here (Hopper) has it natively
    with D.mixed_precision(cuda):
        assert (a @ a).dtype == dtype
    assert not D.grad_scaler(cuda).is_enabled()  # bfloat16 needs no loss scaling


def test_float32_head_runs_the_last_linear_layer_outside_autocast_and_restores_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    x = torch.randn(3, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model[1](model[0](x))
    reference = model[2](hidden.float())  # the head in float32 on the bf16 hidden layer
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):  # CPU autocast stands in for CUDA's
        assert model(x).dtype == torch.bfloat16
        with D.float32_head(model):
            out = model(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference)  # the head saw its bf16 input in float32
    assert "forward" not in vars(model[2])  # the class's forward again
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_autocast_dtype_and_tuned_convolutions_off_cuda():
    cpu = torch.device("cpu")
    assert D.autocast_dtype(cpu) is None
    before = torch.backends.cudnn.benchmark
    with D.tuned_convolutions(cpu):
        assert torch.backends.cudnn.benchmark == before
    with D.tuned_convolutions(torch.device("cuda")):  # only a flag: no CUDA call is made
        assert torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.benchmark == before


@pytest.mark.gpu
def test_limit_cuda_memory_caps_the_allocator():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device in this environment")
    try:
        D.limit_cuda_memory(0.25)  # a bare "cuda", as the workers pass it
        D.limit_cuda_memory(0.5, "cuda:0")
        if hasattr(torch.cuda, "get_per_process_memory_fraction"):  # torch >= 2.6 or so
            assert torch.cuda.get_per_process_memory_fraction(0) == pytest.approx(0.5)
        total = torch.cuda.get_device_properties(0).total_memory
        with pytest.raises(torch.cuda.OutOfMemoryError):
            torch.empty(int(0.6 * total), dtype=torch.uint8, device="cuda")
    finally:
        D.limit_cuda_memory(1.0)
        torch.cuda.empty_cache()


def test_check_device_names_what_cannot_be_used():
    from liverfat.errors import LiverfatError
    from liverfat.nn.device import check_device

    check_device("auto")
    check_device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(LiverfatError, match=r"cuda:\d+"):
        check_device(f"cuda:{max(count, 7)}")  # more than this machine has
    with pytest.raises(LiverfatError, match="not a torch device|use auto"):
        check_device("gpu")
