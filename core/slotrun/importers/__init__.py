"""`slotrun import FORMAT CHECKPOINT RUN_DIR`: a released checkpoint as a slotrun run directory.

Each format is a module with a `FORMAT` (name, the KEY=VALUE settings it accepts, and `convert`, which reads the
architecture from the parameter shapes and renames every parameter to slotrun's). The formats are listed here
rather than registered by plugins: a format maps onto specific built-in components, so it ships with them.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from slotrun.errors import UserError
from slotrun.importers import adaslot, adaslot_clevr, ftdinosaur, spot, videosaur
from slotrun.importers.common import Format, Mapped, parse_settings, read_state, write_run

FORMATS: dict[str, Format] = {f.name: f for f in (ftdinosaur.FORMAT, videosaur.FORMAT, spot.FORMAT, adaslot.FORMAT,
                                                   adaslot_clevr.FORMAT)}

__all__ = ["FORMATS", "Format", "Mapped", "import_checkpoint"]


def get_format(name: str) -> Format:
    if name not in FORMATS:
        close = difflib.get_close_matches(name, FORMATS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UserError(f"import: unknown format '{name}'{hint} (known: {', '.join(sorted(FORMATS))})")
    return FORMATS[name]


def import_checkpoint(fmt: str, checkpoint: str | Path, run_dir: str | Path, settings: list[str],
                      plugins: Any) -> Path:
    """Write RUN_DIR from CHECKPOINT read as format `fmt`; returns RUN_DIR."""
    spec = get_format(fmt)
    values = parse_settings(spec, list(settings))
    state = read_state(Path(checkpoint))
    mapped = spec.convert(state, values)
    return write_run(spec, mapped, Path(run_dir), plugins, Path(checkpoint))
