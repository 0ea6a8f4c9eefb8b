"""What ``meta/info.json`` declares for a data column against what a parquet file stores.

Third-party exporters do not always write what they declare: one data file of a dataset stores
``action`` as int64 beside another storing float32, or a state declared float32[17] holds 41
doubles per row. Reading such a column as declared would be a cast (floats truncated to
integers, 41 values squeezed into 17), and reading it as found would let the first episode's
layout decide the whole dataset. So every data file is compared with the declaration when an
episode is read from it, and a mismatch is a :class:`SchemaError` naming the file, the column,
the declared and the found type; nothing is ever cast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class SchemaError(ValueError):
    """A data file's column differs from its declaration in info.json (or the declaration is
    inconsistent in itself, e.g. names that do not fit the shape)."""

    def __init__(self, message: str, *, path: Path | str, column: str, declared: str, found: str):
        super().__init__(message)
        self.path, self.column, self.declared, self.found = str(path), column, declared, found


class MetadataError(ValueError):
    """``meta/episodes`` lacks what is needed to locate an episode (file + column named)."""

    def __init__(self, message: str, *, path: Path | str, column: str):
        super().__init__(message)
        self.path, self.column = str(path), column


def declared_text(ft: dict[str, Any]) -> str:
    """``float32[17]`` for a 1-D feature, ``int64`` for a scalar (shape [1])."""
    shape = [int(s) for s in ft.get("shape") or [1]]
    return str(ft.get("dtype")) if shape == [1] else f"{ft.get('dtype')}{shape}"


def _dtype_name(t: pa.DataType) -> str:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    try:
        return np.dtype(t.to_pandas_dtype()).name
    except (NotImplementedError, TypeError):
        return str(t)


def _widths(col: pa.ChunkedArray) -> set[int]:
    lengths = pc.list_value_length(col.combine_chunks())
    return {int(x) for x in pc.unique(lengths.drop_null()).to_pylist()}


def found_text(col: pa.ChunkedArray) -> str:
    """The stored type in the same notation: ``float64[41]``, ``int64``, ``float32[3..5]``."""
    t = col.type
    if pa.types.is_fixed_size_list(t):
        return f"{_dtype_name(t.value_type)}[{t.list_size}]"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        w = sorted(_widths(col))
        if len(w) == 1:
            return f"{_dtype_name(t.value_type)}[{w[0]}]"
        span = f"{w[0]}..{w[-1]}" if w else ""  # no rows: the width is unknown
        return f"{_dtype_name(t.value_type)}[{span}]"
    return _dtype_name(t)


def names_width(names: Any) -> int | None:
    """How many dimensions ``names`` labels, for the layouts LeRobot datasets use: a flat list,
    a list holding one list (``[[...]]``), or a dict with one list (``{"motors": [...]}``).
    None when the layout is none of these (then there is nothing to compare)."""
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    if isinstance(names, list) and len(names) == 1 and isinstance(names[0], list):
        names = names[0]
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        return len(names)
    return None


def check_names(key: str, ft: dict[str, Any], info_path: Path | str) -> None:
    """A 1-D feature's names must label each of its dimensions once."""
    shape = [int(s) for s in ft.get("shape") or [1]]
    n = names_width(ft.get("names"))
    if n is None or len(shape) != 1 or n == shape[0]:
        return
    raise SchemaError(
        f"{info_path}: feature {key!r} is declared with shape {shape} but {n} names "
        f"{ft.get('names')}; names label the dimensions one to one: fix features.{key} in "
        "meta/info.json", path=info_path, column=key, declared=declared_text(ft),
        found=f"{n} names")


def check_columns(path: Path, features: dict[str, dict[str, Any]], columns: list[str],
                  table: pa.Table, info_path: Path | str) -> None:
    """Raise :class:`SchemaError` for the first declared column of ``columns`` that ``table``
    (rows read from ``path``) lacks or stores with another dtype or width than declared."""
    for key in columns:
        ft = features[key]
        check_names(key, ft, info_path)
        declared = declared_text(ft)
        if key not in table.column_names:
            raise SchemaError(
                f"{path}: column {key!r}: declared {declared} in {info_path}, found no such "
                "column; re-export the file with it or remove the feature from info.json",
                path=path, column=key, declared=declared, found="absent")
        col = table.column(key)
        found = found_text(col)
        shape = [int(s) for s in ft.get("shape") or [1]]
        ok = found in (declared, f"{ft.get('dtype')}[]") or (
            shape == [1] and found == f"{ft.get('dtype')}[1]")
        if not ok:
            raise SchemaError(
                f"{path}: column {key!r}: declared {declared} in {info_path}, found {found} "
                f"(parquet type {col.type}); reading it either way would cast or mix layouts, "
                "so it is not imported: re-export this file with the declared type, or fix "
                "info.json if every file stores the found one",
                path=path, column=key, declared=declared, found=found)
