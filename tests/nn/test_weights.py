"""Local pretrained weights: safetensors and ``weights_only`` torch files, no pickle."""

from __future__ import annotations

import pytest
import torch

from liverfat.errors import LiverfatError
from liverfat.nn.registry import build_model
from liverfat.nn.weights import load_pretrained, read_state_dict


def test_pretrained_weights_safetensors_and_torch(tmp_path):
    from safetensors.torch import save_file

    source = build_model("small_cnn", 1, 5)
    save_file(
        {k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors")
    )
    torch.save(source.state_dict(), tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        target = build_model("small_cnn", 1, 2)  # other head size: skipped
        skipped = load_pretrained(target, tmp_path / name)
        assert set(skipped) == {"fc.weight", "fc.bias"}
        assert torch.equal(target.features[0][0].weight, source.features[0][0].weight)
    (tmp_path / "bad.pt").write_bytes(b"not a state dict")
    with pytest.raises(LiverfatError, match="cannot be read"):
        load_pretrained(build_model("small_cnn", 1, 2), tmp_path / "bad.pt")


class _Pickled:
    """Not a tensor: unpickling it would run arbitrary code paths, so weights_only refuses."""


def test_torch_files_are_read_weights_only(tmp_path):
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "wrapped.pt")
    assert torch.equal(read_state_dict(tmp_path / "wrapped.pt")["w"], torch.ones(2))
    torch.save({"w": _Pickled()}, tmp_path / "object.pt")
    with pytest.raises(LiverfatError, match="cannot be read"):
        read_state_dict(tmp_path / "object.pt")
    torch.save(torch.ones(2), tmp_path / "tensor.pt")
    with pytest.raises(LiverfatError, match="not a state dict"):
        read_state_dict(tmp_path / "tensor.pt")
    with pytest.raises(LiverfatError, match="not found"):
        read_state_dict(tmp_path / "missing.pt")
    with pytest.raises(LiverfatError, match="no tensor matches"):
        load_pretrained(build_model("small_cnn", 1, 2), tmp_path / "wrapped.pt")
