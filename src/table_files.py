"""A user's table file read as the program that wrote it wrote it: a CSV file's separator,
decimal mark and text encoding, a workbook's sheet, a Parquet file. A file of another
kind than dataset.format says is one line naming what it is and the way on.

Only pandas is imported here (and calamine by pandas, when a workbook is read); the checks on
the rows are src/tables.py's.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import lzma
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
from pandas.api import types

from src.config import (
    ConfigError,
    DatasetConfig,
    DecimalMark,
    Separator,
    TableFormat,
    Thousands,
)

SNIFF_CHARS = 1 << 16  # a file's kind, separator and decimal mark come from its first bytes
MAX_TITLE_LINES = 10  # lines above a CSV table's header that are not rows of it (a title)
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}  # pandas infers the same
_POINT_NUMBER = re.compile(r"[+-]?\d*\.\d+([eE][+-]?\d+)?")


def _grouped(mark: Thousands, decimal: DecimalMark) -> re.Pattern[str]:
    """A number whose thousands are grouped by ``mark``: 1,234.5 or 1 234,5."""
    return re.compile(
        rf"[+-]?\d{{1,3}}({re.escape(mark.value)}\d{{3}})+({re.escape(decimal.value)}\d+)?"
    )


_MARKS = {  # the thousands marks looked for, by decimal mark
    DecimalMark.point: (Thousands.comma, Thousands.apostrophe),
    DecimalMark.comma: (Thousands.point, Thousands.space, Thousands.nbsp, Thousands.narrow_nbsp),
}
_GROUPED = {decimal: {t: _grouped(t, decimal) for t in marks} for decimal, marks in _MARKS.items()}
_COMMA_MARKS = "".join(re.escape(t.value) for t in _MARKS[DecimalMark.comma])
_COMMA_NUMBER = re.compile(rf"[+-]?(\d{{1,3}}([{_COMMA_MARKS}]\d{{3}})+|\d*),\d+")  # 1,5 1.234,5
_MAGIC = {  # how a file starts -> what it is
    b"PAR1": "parquet",
    b"PK\x03\x04": "zip",  # .xlsx and .ods workbooks are zip archives
    b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1": "xls",  # an Excel 97-2003 workbook (OLE2)
}
_ODS = b"application/vnd.oasis.opendocument.spreadsheet"
WORKBOOKS = {  # what calamine reads, as dataset=excel
    "xlsx": "an Excel workbook",
    "xls": "an Excel 97-2003 workbook",
    "ods": "an OpenDocument spreadsheet",
}


@dataclass(frozen=True)
class Dialect:
    """How a CSV file writes its fields and numbers. pandas reads commas and decimal points
    unless told; a semicolon file (a spreadsheet's export in much of Europe) would otherwise
    be one text column, and its ``1,5`` text."""

    label: ClassVar[str] = "CSV"
    sep: Separator = Separator.comma
    decimal: DecimalMark = DecimalMark.point
    encoding: str = "utf-8"
    thousands: Thousands = Thousands.none
    skip: int = 0  # lines above the header: a report's title, a blank line

    @property
    def options(self) -> dict[str, str]:
        """pandas' ``read_csv`` and ``to_csv`` keywords for this dialect."""
        return {"sep": self.sep.value, "decimal": self.decimal.value, "encoding": self.encoding}

    def read(self, file: Path, **options: Any) -> pd.DataFrame:
        mark = self.thousands.value
        if not mark.isascii():  # pandas' fast reader takes one byte; U+00A0 is two in UTF-8
            frame = pd.read_csv(file, **self.options, skiprows=self.skip, **options)
            return _ungroup(frame, self.thousands, self.decimal)
        grouped = mark or None
        return pd.read_csv(file, **self.options, thousands=grouped, skiprows=self.skip, **options)

    def __str__(self) -> str:
        """Words for the start-up line, when it is not the plain comma-and-point CSV."""
        words = {Separator.semicolon: "semicolons", Separator.tab: "tabs", Separator.pipe: "pipes"}
        groups = {
            Thousands.comma: "1,234",
            Thousands.point: "1.234",
            Thousands.space: "1 234",
            Thousands.apostrophe: "1'234",
            Thousands.nbsp: "1 234, no-break spaces",
            Thousands.narrow_nbsp: "1 234, narrow no-break spaces",
        }
        said = [f"fields separated by {words[self.sep]}"] if self.sep in words else []
        said += ["decimal commas"] if self.decimal == DecimalMark.comma else []
        said += (
            [f"thousands grouped ({groups[self.thousands]})"] if self.thousands in groups else []
        )
        if self.skip:
            said.append(f"header on line {self.skip + 1}, the line(s) above it skipped")
        return ", ".join(said)


def _ungroup(frame: pd.DataFrame, mark: Thousands, decimal: DecimalMark) -> pd.DataFrame:
    """The text columns all of whose values are numbers, grouped by ``mark`` or not, as
    numbers: what ``read_csv(thousands=...)`` does for a one-byte mark."""
    point = re.escape(decimal.value)
    number = re.compile(rf"{_grouped(mark, decimal).pattern}|[+-]?\d+({point}\d+)?")
    for name in frame.columns:
        column = frame[name]
        if types.is_numeric_dtype(column.dtype) or types.is_bool_dtype(column.dtype):
            continue
        values = column.dropna()
        if len(values) and all(isinstance(v, str) and number.fullmatch(v.strip()) for v in values):
            text = column.str.strip().str.replace(mark.value, "")
            frame[name] = pd.to_numeric(text.str.replace(decimal.value, "."))
    return frame


@dataclass(frozen=True)
class Sheet:
    """One sheet of a workbook (.xlsx, .xls, .ods), its first row the column names as a CSV
    file's header. Read with calamine, not openpyxl: pandas.read_excel of a 20,000-row,
    22-column sheet took 0.32-0.34 s against 1.82-1.89 s, to the same values (2026-12-05)."""

    label: ClassVar[str] = "Excel"
    name: str
    sheets: tuple[str, ...] = ()  # all of the workbook's, for an error that names them

    def read(self, file: Path, **options: Any) -> pd.DataFrame:
        with file.open("rb") as handle:  # by its content, whatever the file's name
            return pd.read_excel(handle, sheet_name=self.name, engine="calamine", **options)

    def __str__(self) -> str:
        return f"sheet '{self.name}'"


@dataclass(frozen=True)
class ParquetFile:
    """A Parquet file (pyarrow): its columns come typed, nothing to read from its lines."""

    label: ClassVar[str] = "Parquet"

    def read(self, file: Path) -> pd.DataFrame:
        return pd.read_parquet(file)

    def __str__(self) -> str:
        return ""


Reader = Dialect | Sheet | ParquetFile


def reader(file: Path, cfg: DatasetConfig) -> Reader:
    """How to read ``file`` as ``cfg`` says, once its first bytes agree that it is that kind
    of file; one line otherwise."""
    _check_kind(file, cfg)
    if cfg.format == TableFormat.parquet:
        return ParquetFile()
    if cfg.format == TableFormat.excel:
        return sheet_of(file, cfg.sheet, f"dataset.path={cfg.path}", "dataset.sheet")
    return dialect(file, cfg.sep, cfg.decimal, cfg.encoding, cfg.thousands, cfg.skip_lines)


def sheet_of(file: Path, asked: str | None, where: str, setting: str) -> Sheet:
    """The asked sheet (None: the first), or one line listing the workbook's sheets."""
    try:
        with file.open("rb") as handle, pd.ExcelFile(handle, engine="calamine") as book:
            names = tuple(book.sheet_names)
    except Exception as error:  # a damaged workbook
        reason = f"{type(error).__name__}: {' '.join(str(error).split())[:200]}"
        raise ConfigError(f"{where} is not a readable workbook ({reason})") from None
    if asked is not None and asked not in names:
        raise ConfigError(
            f"{setting}='{asked}' is not a sheet of {file.name}; its sheets: {', '.join(names)}"
        )
    return Sheet(names[0] if asked is None else asked, names)


def kind(file: Path) -> str:
    """What the file's first bytes say it is, whatever its name: parquet, a workbook (xlsx,
    xls, ods: see WORKBOOKS), zip, utf-16, binary or text."""
    with file.open("rb") as handle:
        head = handle.read(SNIFF_CHARS)
    found = next((what for magic, what in _MAGIC.items() if head.startswith(magic)), None)
    if found == "zip":
        try:
            with zipfile.ZipFile(file) as archive:
                if "xl/workbook.xml" in archive.namelist():
                    return "xlsx"
                if "mimetype" in archive.namelist() and archive.read("mimetype") == _ODS:
                    return "ods"
        except zipfile.BadZipFile:
            pass
    if found:
        return found
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return "binary" if b"\0" in head else "text"


def _check_kind(file: Path, cfg: DatasetConfig) -> None:
    """A file of another kind than dataset.format is one line naming what it is and the way
    on; read as the wrong kind, pandas would say only that some byte does not decode."""
    where, suffix = f"dataset.path={cfg.path}", file.suffix.lower()
    found = kind(file)
    if found == "parquet" and cfg.format != TableFormat.parquet:
        raise ConfigError(f"{where} is a Parquet file; use dataset=parquet")
    if found in WORKBOOKS and cfg.format != TableFormat.excel:
        raise ConfigError(
            f"{where} is {WORKBOOKS[found]}; use dataset=excel (dataset.sheet=<name>)"
        )
    if cfg.format == TableFormat.excel and found not in WORKBOOKS:
        hint = "use dataset=csv" if found in ("text", "utf-16") else "give a workbook"
        raise ConfigError(f"{where} is not a workbook (.xlsx, .xls or .ods); {hint}")
    if cfg.format == TableFormat.parquet:
        if found in ("text", "utf-16"):
            raise ConfigError(f"{where} is text, not a Parquet file; for CSV use dataset=csv")
        return
    if cfg.format != TableFormat.csv or suffix in (*_OPENERS, ".zip"):  # compressed: pandas
        return
    if found == "zip":
        raise ConfigError(f"{where} is a zip archive, not CSV text; give the CSV file inside")
    wide = codecs.lookup(cfg.encoding).name.startswith(("utf-16", "utf-32"))  # NULs are text
    if found == "utf-16" and not wide:
        raise ConfigError(
            f"{where} is UTF-16 text (it starts with UTF-16's byte order mark, as a "
            "spreadsheet's 'Unicode text' export does); set dataset.encoding=utf-16"
        )
    if found == "binary" and not wide:
        raise ConfigError(f"{where} holds binary data, not CSV text; give a CSV file")


def dialect(
    file: Path,
    sep: Separator = Separator.auto,
    decimal: DecimalMark = DecimalMark.auto,
    encoding: str = "utf-8",
    thousands: Thousands = Thousands.auto,
    skip: int | None = None,
) -> Dialect:
    """The file's separator, decimal mark, thousands grouping and title lines: as asked, or
    read from its first lines. The separator is the one whose table (see _layout) has the
    most rows, then the most fields, comma first among equals; the decimal mark is a comma
    when numbers are written ``1,5`` and never ``1.5``, which only a non-comma file can do;
    thousands are grouped when a number is written so (``"1,234.5"`` quoted in a comma
    file). Our own
    reading, not ``pandas.read_csv(sep=None)``: that one parses the whole file with the
    Python engine, many times slower than the C engine on large files, and takes a title
    line for the header."""
    if skip is not None and all(asked.name != "auto" for asked in (sep, decimal, thousands)):
        return Dialect(sep, decimal, encoding, thousands, skip)
    suffixes = [suffix.lower() for suffix in file.suffixes]
    opener = _OPENERS.get(suffixes[-1] if suffixes else "", open)
    try:
        with opener(file, "rt", encoding=encoding, errors="replace", newline="") as handle:
            sample = handle.read(SNIFF_CHARS)
        if len(sample) == SNIFF_CHARS:  # the last line may be cut: leave it out
            sample = sample[: sample.rfind("\n") + 1] or sample
        if sep == Separator.auto:
            sep = _sniff_separator(sample, tab_first=bool({".tsv", ".tab"} & set(suffixes)))
        above, _, rows = _layout(sample, sep)
        skip = above if skip is None else skip
        cells = [cell.strip() for row in rows[1:] for cell in row]  # not the header
        if decimal == DecimalMark.auto:
            comma = sep != Separator.comma and any(_COMMA_NUMBER.fullmatch(c) for c in cells)
            grouped = _GROUPED[DecimalMark.comma][Thousands.point]  # 1.234: grouped, or 1.234?
            point = any(_POINT_NUMBER.fullmatch(c) and not grouped.fullmatch(c) for c in cells)
            decimal = DecimalMark.comma if comma and not point else DecimalMark.point
        if thousands == Thousands.auto:
            patterns = _GROUPED[decimal].items()
            found = (t for t, pattern in patterns if any(pattern.fullmatch(c) for c in cells))
            thousands = next(found, Thousands.none)  # "1,234" in a comma file: quoted
    except (csv.Error, OSError, EOFError, lzma.LZMAError):  # NUL bytes, a damaged archive:
        # pandas then says what is wrong with the file
        sep = Separator.comma if sep == Separator.auto else sep
        decimal = DecimalMark.point if decimal == DecimalMark.auto else decimal
        thousands = Thousands.none if thousands == Thousands.auto else thousands
        skip = skip or 0
    return Dialect(sep, decimal, encoding, thousands, skip)


def _layout(sample: str, sep: Separator) -> tuple[int, int, list[list[str]]]:
    """Where the table starts when fields are separated by ``sep``: (lines above its header,
    fields per row, its rows from the header on); (0, 1, []) when there is no table. The
    table is the rows from the first non-blank one on which every later row has the same
    number (> 1) of fields; the rows above it, at most MAX_TITLE_LINES, must have fewer (a
    title), else a ragged row in the data would be taken for the end of a title."""
    reader = csv.reader(io.StringIO(sample), delimiter=sep.value)
    starts, rows, line = [], [], 0
    for row in reader:
        if row:
            starts.append(line)
            rows.append(row)
        line = reader.line_num
    widths = [len(row) for row in rows]
    for first in range(min(len(rows) - 1, MAX_TITLE_LINES + 1)):
        width = widths[first]
        if width > 1 and set(widths[first:]) == {width} and max(widths[:first], default=0) < width:
            return starts[first], width, rows[first:]
    return 0, 1, []


def _sniff_separator(sample: str, tab_first: bool) -> Separator:
    candidates = [s for s in Separator if s != Separator.auto]
    if tab_first:  # a .tsv file: tabs win a tie
        candidates.sort(key=lambda s: s != Separator.tab)
    # The table of the most rows, then of the most fields, then the first candidate: a semicolon
    # file's decimal commas can make a table of comma-separated rows, but one without its header.
    layouts = {candidate: _layout(sample, candidate) for candidate in candidates}
    best = max(candidates, key=lambda c: (len(layouts[c][2]), layouts[c][1]))
    return best if layouts[best][1] > 1 else Separator.comma
