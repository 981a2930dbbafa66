"""The RePo / Dreamer speed benchmark against SheepRL: the table, and its refusals."""

import argparse

import pytest

from embodied.bench import repo_speed


def test_speed_table_without_sheeprl(tmp_path):
    out = tmp_path / "speed.md"
    repo_speed.main(["--batches", "2x3", "--updates", "1", "--rounds", "2", "--objectives", "repo",
                     "--sheeprl-python", str(tmp_path / "missing" / "python"), "--out", str(out)])  # fmt: skip
    text = out.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| 2x3 | embodied repo (eager)"))
    rate, rounds = row.split(" | ")[2:4]
    assert float(rate) > 0 and len(rounds.split(", ")) == 2
    assert "SheepRL was not measured" in text and "make setup-sheeprl" in text
    # Dreamer v1's networks at 64x64: the world model SheepRL builds has these 5,129,420 parameters too
    assert "| embodied repo (eager) | 5,129,420 | 167,604 | 126,801 |" in text


def test_bad_batch_shapes_are_refused():
    assert repo_speed.batch_shape("16x32") == (16, 32)
    for text in ("16", "16x", "axb", "0x32", "16x1"):
        with pytest.raises(argparse.ArgumentTypeError, match="a batch"):
            repo_speed.batch_shape(text)
    with pytest.raises(SystemExit):
        repo_speed.main(["--batches", "16x32", "--updates", "0"])
