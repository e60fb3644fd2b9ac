"""The shared durable-write helpers: a PNG appears whole under its name with no temporary left beside it, and
fsyncing a folder's files works on a folder of files."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from slotrun.files import fsync_files, write_png


def test_write_png_replaces_atomically_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "pictures" / "a.png"
    write_png(Image.new("RGB", (3, 2), "red"), path)
    write_png(Image.new("RGB", (5, 4), "blue"), path)  # over an existing file
    with Image.open(path) as image:
        assert image.size == (5, 4) and image.getpixel((0, 0)) == (0, 0, 255)
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.png"]


def test_fsync_files_accepts_files_and_subfolders(tmp_path: Path) -> None:
    (tmp_path / "index.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    fsync_files(tmp_path)  # a subfolder is skipped, not opened as a file
    assert (tmp_path / "index.json").read_text() == "{}"
