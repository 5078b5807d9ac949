"""A damaged checkpoint's message names the cause in one short line (torch's weights-only error buries it
among lines of advice, and cutting that at a fixed width ended mid-sentence)."""
import os

import pytest
import torch

from pimm_fast.train import checkpoint as ckpt


def reason(path) -> str:
    with pytest.raises(ckpt.CheckpointError) as info:
        ckpt.load(path)
    message = str(info.value)
    assert "\n" not in message and message.endswith(")")
    return message[message.index("(") + 1:-1]


def test_garbage_file_names_the_unpickling_cause(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"garbage" * 10)
    text = reason(path)
    assert text == "a weights-only load failed: Unsupported operand 103", text


def test_foreign_objects_name_the_refused_global(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"x": os.stat_result((0,) * 10)}, path)
    text = reason(path)
    assert "os.stat_result" in text and "In PyTorch 2.6" not in text


def test_truncated_zip_keeps_its_whole_first_line(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save({"format": ckpt.FORMAT, "model": {"w": torch.zeros(1000, 10)}}, path)
    path.write_bytes(path.read_bytes()[:2000])
    assert reason(path) == "PytorchStreamReader failed reading zip archive: failed finding central directory"


def test_a_long_first_line_is_cut_at_a_word():
    text = ckpt.short_reason(RuntimeError("word " * 100))
    assert text.endswith("word ...") and len(text) <= 204
