"""Finding what a benchmark run wrote: OUT/NAME/CONDITION.{json,md}."""

from pathlib import Path


def result_file(out: Path, name: str, suffix: str) -> Path:
    """The one result file a benchmark wrote under OUT/NAME/ (a run writes one condition's pair)."""
    (path,) = sorted((out / name).glob(f"*.{suffix}"))
    return path
