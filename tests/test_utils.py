"""Shared helpers: exported weights (``madis.utils.pretrained``) and lazy package exports."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_model
from torch import nn

from madis.utils.pretrained import load_weights, read_config, save_pretrained


class Tied(nn.Module):
    """An embedding tied to its output layer (as Qwen3 ties them) plus an integer buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.out = nn.Linear(3, 5, bias=False)
        self.out.weight = self.embed.weight
        self.register_buffer("count", torch.arange(4))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_round_trip_keeps_tied_weights_once_locally_and_on_s3(where, tmp_path, request):
    root = str(tmp_path / "m") if where == "local" else f"{request.getfixturevalue('s3_bucket')}/m"
    torch.manual_seed(0)
    saved = Tied()
    save_pretrained(root, saved, {"kind": "test.Tied", "size": 5})
    assert read_config(root, {"kind": "test.Tied"}, "Tied") == {"kind": "test.Tied", "size": 5}
    loaded = Tied()
    assert load_weights(root, loaded) == ([], [])
    assert torch.equal(loaded.embed.weight, saved.embed.weight)
    assert loaded.out.weight is loaded.embed.weight  # still tied after loading
    assert torch.equal(loaded.count, torch.arange(4))
    if where == "local":  # one copy of the tied matrix in the file
        assert set(load_file(str(tmp_path / "m" / "model.safetensors"))) == {"count", "embed.weight"}


def test_views_of_one_flat_buffer_and_files_of_safetensors_save_model(tmp_path):
    # DeepSpeed keeps parameters as disjoint views of one flat buffer: each is stored whole
    flat = torch.arange(8.0)
    module = nn.Linear(2, 2)
    module.weight.data, module.bias.data = flat[:4].view(2, 2), flat[4:6]
    save_pretrained(tmp_path / "flat", module, {"kind": "x"})
    assert load_file(str(tmp_path / "flat" / "model.safetensors"))["bias"].tolist() == [4.0, 5.0]
    # a tied model saved by safetensors' own save_model (alias in the metadata) loads too
    torch.manual_seed(1)
    tied = Tied()
    save_model(tied, str(tmp_path / "model.safetensors"))
    loaded = Tied()
    load_weights(tmp_path, loaded)
    assert torch.equal(loaded.out.weight, tied.embed.weight)


def test_float32_export_of_a_bf16_module(tmp_path):
    module = Tied().to(torch.bfloat16)
    save_pretrained(tmp_path, module, {"kind": "x"}, float32=True)
    state = load_file(str(tmp_path / "model.safetensors"))
    assert state["embed.weight"].dtype == torch.float32 and state["count"].dtype == torch.int64
    assert torch.equal(state["embed.weight"], module.embed.weight.float())
    save_pretrained(tmp_path / "as-is", module, {"kind": "x"})
    assert load_file(str(tmp_path / "as-is" / "model.safetensors"))["embed.weight"].dtype == torch.bfloat16


def test_clear_errors_and_nothing_written_for_a_bad_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json; not a saved Tied"):
        read_config(tmp_path, {"kind": "test.Tied"}, "Tied")
    save_pretrained(tmp_path / "m", Tied(), {"kind": "other"})
    with pytest.raises(ValueError, match="does not describe a Tied .kind is 'other', expected 'test.Tied'"):
        read_config(tmp_path / "m", {"kind": "test.Tied"}, "Tied")
    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_config(tmp_path / "m", {"kind": "other"}, "Tied")
    with pytest.raises(RuntimeError, match="Missing key"):
        load_weights(tmp_path / "m", nn.Sequential(Tied(), nn.Linear(2, 2)))
    with pytest.raises(TypeError):
        save_pretrained(tmp_path / "bad", Tied(), {"kind": object()})
    assert not (tmp_path / "bad").exists()


def test_lazy_exports_load_on_first_use_in_a_fresh_interpreter():
    code = ("import sys, madis.mdlm as m, madis.metrics as mm\n"
            "assert 'transformers' not in sys.modules and 'torch' not in sys.modules\n"
            "assert m.ByteTokenizer().encode('a') == [97]\n"
            "assert 'transformers' not in sys.modules\n"
            "assert m.MaDiSModel.__name__ == 'MaDiSModel' and 'transformers' in sys.modules\n"
            "assert 'MaDiSModel' in dir(m) and 'dtw_jpe' in dir(mm)\n"
            "try:\n    m.nothing\nexcept AttributeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "module 'madis.mdlm' has no attribute 'nothing'"


def test_local_copy_of_s3_is_removed_after_the_block_even_on_errors(s3_bucket, tmp_path,
                                                                     monkeypatch):
    import fsspec

    from madis.utils.pretrained import local_copy

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    fs, _ = fsspec.core.url_to_fs(s3_bucket)
    fs.pipe_file(f"{s3_bucket[5:]}/e/config.json", b"{}")
    fs.pipe_file(f"{s3_bucket[5:]}/e/tokenizer/model.safetensors", b"abc")
    with local_copy(f"{s3_bucket}/e") as local:
        assert local.startswith(str(tmp_path / "tmp"))
        assert (Path(local) / "tokenizer" / "model.safetensors").read_bytes() == b"abc"
    assert list((tmp_path / "tmp").iterdir()) == []
    with pytest.raises(KeyError):
        with local_copy(f"{s3_bucket}/e"):
            raise KeyError("a failed load")
    assert list((tmp_path / "tmp").iterdir()) == []
    with pytest.raises(FileNotFoundError, match="no files"):
        with local_copy(f"{s3_bucket}/absent"):
            pass
    assert list((tmp_path / "tmp").iterdir()) == []
    with local_copy(tmp_path / "tmp") as same:  # local: no copy
        assert same == str(tmp_path / "tmp")
