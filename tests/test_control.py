"""The control text: any dataset and text column (docs/train.md, "The control text"), and the renamed keys and
channel, still read under their old names with a warning until the next release."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from container_src.config import ConfigError, TrainConfig, VizConfig, resolve
from container_src.data import load_control, open_control
from container_src.paths import ContainerPaths


def test_old_key_names_still_work_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """docs/train.md: "Renamed in this release, still accepted until the next one with a warning"."""
    caplog.set_level(logging.WARNING)
    old = {"tinystories_path": "someone/web-text", "tinystories_split": "sample", "tinystories_eval_split": "test"}
    cfg = resolve(old, schema=TrainConfig).config
    assert (cfg.control_path, cfg.control_split, cfg.control_eval_split) == ("someone/web-text", "sample", "test")
    for name, new in (("tinystories_path", "control_path"), ("tinystories_eval_split", "control_eval_split")):
        assert f"{name} is deprecated, use {new}" in caplog.text
    viz = resolve(cli={"tinystories_split": "other"}, schema=VizConfig)
    assert viz.config.control_split == "other" and viz.sources["control_split"] == "cli"


def test_old_and_new_name_together_are_refused() -> None:
    """docs/train.md: "(both names at once is an error)"."""
    with pytest.raises(ConfigError, match="tinystories_path and control_path are both given"):
        resolve({"tinystories_path": "a/b", "control_path": "c/d"}, schema=TrainConfig)
    # in different sources the higher one wins, as for any key
    cfg = resolve({"tinystories_path": "a/b"}, cli={"control_path": "c/d"}, schema=TrainConfig).config
    assert cfg.control_path == "c/d"


def test_an_empty_text_column_name_is_refused() -> None:
    """docs/configuration.md: "stops the run before any model is loaded, with a message naming the key"."""
    with pytest.raises(ConfigError, match="control_text_column=''"):
        resolve(cli={"control_text_column": ""}, schema=TrainConfig)


def _web_text(folder: Path) -> Path:
    """A control set shaped like a web-text sample: the text in `content`, with another string column beside it."""
    rows = {"content": [f"page {i} about the weather and trains" for i in range(6)], "url": ["u"] * 6}
    held = {"content": ["a held-out page"], "url": ["v"]}
    DatasetDict(train=Dataset.from_dict(rows), validation=Dataset.from_dict(held)).save_to_disk(str(folder))
    return folder


def test_any_text_column(tmp_path: Path) -> None:
    """docs/train.md: "The negative control is any Hugging Face text dataset"."""
    channel = _web_text(tmp_path / "control")
    stream, identity = load_control(channel, "unused", "train", "content")
    rows = list(stream)
    assert [r["text"] for r in rows][:2] == [f"page {i} about the weather and trains" for i in (0, 1)]
    assert set(rows[0]) == {"text"} and len(rows) == 6
    assert identity.endswith("column content")  # another column is other data: another run id
    assert [r["text"] for r in open_control(channel, "unused", "validation", "content")] == ["a held-out page"]


def test_a_missing_column_names_the_ones_there(tmp_path: Path) -> None:
    """docs/train.md: "ends the run before the model loads, naming the columns there are"."""
    channel = _web_text(tmp_path / "control")
    with pytest.raises(ConfigError, match=r"no 'text' column \(found content, url\); set control_text_column"):
        open_control(channel, "unused", "train")
    with pytest.raises(ConfigError, match="column 'n' holds int"):
        Dataset.from_dict({"n": [1, 2]}).save_to_disk(str(tmp_path / "numbers"))
        open_control(tmp_path / "numbers", "unused", "train", "n")


def _tree(tmp_path: Path, *channels: str) -> ContainerPaths:
    for name in channels:
        folder = tmp_path / "input" / "data" / name
        folder.mkdir(parents=True)
        (folder / "train.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    return ContainerPaths(tmp_path)


def test_the_old_channel_name_is_read_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """README: "`tinystories`, its old name, is still read, with a warning"."""
    caplog.set_level(logging.WARNING)
    paths = _tree(tmp_path, "tinystories")
    assert paths.control_channel() == tmp_path / "input" / "data" / "tinystories"
    assert "channel tinystories is deprecated: name it control" in caplog.text
    caplog.clear()
    assert _tree(tmp_path / "new", "control").control_channel() == tmp_path / "new" / "input" / "data" / "control"
    assert "deprecated" not in caplog.text


def test_both_channel_names_are_refused(tmp_path: Path) -> None:
    """docs/container.md: "both at once is an error"."""
    with pytest.raises(ConfigError, match="channels control and tinystories are both given"):
        _tree(tmp_path, "control", "tinystories").control_channel()
