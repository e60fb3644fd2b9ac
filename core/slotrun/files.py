"""Durable and atomic file writes shared by checkpoints, run files, dataset shards, pictures and sweep plots."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename into it) durable."""
    try:
        fsync_file(path)
    except OSError:
        pass  # some file systems cannot fsync a directory; callers' markers still order the write


def fsync_files(folder: Path) -> None:
    """Every file directly in `folder`, then the folder itself: its contents are durable before it is renamed."""
    for entry in folder.iterdir():
        if entry.is_file():
            fsync_file(entry)
    fsync_dir(folder)


def write_atomic(path: Path, text: str) -> None:
    """Write a text file through a temporary file, fsynced: a crash leaves the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_png(image: Any, path: Path) -> None:
    """Save a PIL image as PNG through a temporary file: a reader (TensorBoard, a person) never sees half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)
