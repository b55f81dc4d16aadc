"""Formats: one data file -> a pandas frame of its columns, however an everyday tool wrote it.

    frame = formats.read_table(Path("train.tsv.gz"), "gs://b/train.tsv.gz", "tsv", True, formats.ReadOptions())

Decompression (.gz .bz2 .xz .zst), decoding (--encoding; UTF-8 with or without BOM and UTF-16 with
a BOM by default), the delimiter (--delimiter, sniffed for .csv from the header), RFC 4180 quoting
(--quoting, detected), JSON Lines or one JSON document (--json-field), Parquet, and Arrow files /
`datasets.save_to_disk` folders. Validation (columns, texts, labels) stays in job/data.py; this
module only reads, and numbers records as the user counts them (record_line) for its messages.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import json
import lzma
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from job.errors import ConfigError, DataError

FORMATS = ("auto", "csv", "tsv", "jsonl", "json", "parquet", "arrow")
QUOTING = ("auto", "csv", "none")
# --delimiter spellings -> the character; "auto": sniffed for CSV, a tab for TSV.
DELIMITERS = {"auto": None, ",": ",", ";": ";", "|": "|", "\t": "\t", "\\t": "\t", "tab": "\t"}
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "tsv", ".jsonl": "jsonl",
              ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet", ".arrow": "arrow"}
COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst")
# Files `datasets.save_to_disk` writes beside its .arrow shards: bookkeeping, not rows.
HF_METADATA = ("state.json", "dataset_info.json", "dataset_dict.json")
# Quoting is decided on this much text from the first line holding a quote: enough for thousands
# of records, small enough to parse in milliseconds with the csv module.
QUOTING_SAMPLE = 1 << 20


@dataclass(frozen=True)
class ReadOptions:
    encoding: str = "auto"
    quoting: str = "auto"
    delimiter: str = "auto"
    json_field: str | None = None
    columns: tuple[str, ...] = ()  # the named columns (text, pair, label): how the delimiter is sniffed


def check_options(encoding: str, quoting: str, delimiter: str) -> None:
    """ConfigError for an option value that cannot work, before any file is read."""
    if encoding != "auto":
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ConfigError(f"--encoding {encoding!r} is not an encoding Python knows (e.g. utf-8, latin-1, "
                              "cp1252, utf-16)") from None
    if quoting not in QUOTING:
        raise ConfigError(f"--quoting must be one of {', '.join(QUOTING)}, got {quoting!r}")
    if delimiter not in DELIMITERS:
        raise ConfigError(f"--delimiter must be one of auto, ',', ';', '|' or tab ('\\t'), got {delimiter!r}")


def compression(name: str) -> str:
    """The compression suffix of a file name ('' when none)."""
    lower = name.lower()
    return next((s for s in COMPRESSIONS if lower.endswith(s)), "")


def file_format(path: str, configured: str) -> str:
    if configured != "auto":
        return configured
    name = path.lower()
    name = name[:len(name) - len(compression(name))]
    for ext, fmt in EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    raise DataError(f"cannot tell the format of {path} from its name: pass --format csv|tsv|jsonl|json|parquet|arrow")


def is_metadata(name: str) -> bool:
    return name.rsplit("/", 1)[-1] in HF_METADATA


# --------------------------------------------------------------------------------------------
# Bytes and text

def read_bytes(path: Path, shown: str) -> bytes:
    raw = path.read_bytes()
    suffix = compression(shown)
    if not suffix:
        return raw
    try:
        if suffix == ".gz":
            return gzip.decompress(raw)
        if suffix == ".bz2":
            return bz2.decompress(raw)
        if suffix == ".xz":
            return lzma.decompress(raw)
        import pyarrow as pa  # zstd: pyarrow's codec, so no extra package

        with pa.input_stream(pa.py_buffer(raw), compression="zstd") as stream:
            return stream.read()
    except Exception as exc:  # each library raises its own types for a damaged stream
        kind = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd"}[suffix]
        raise DataError(f"{shown} is not a valid {kind} file ({exc})") from None


def decode(raw: bytes, shown: str, encoding: str = "auto") -> str:
    if encoding == "auto":
        # A byte-order mark says what the file is: spreadsheet exports put one first (UTF-8 or,
        # "Unicode text" in Excel, UTF-16). Without one the file must be UTF-8.
        if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            encoding = "utf-16"
        else:
            encoding = "utf-8-sig"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        name = "UTF-8" if encoding in ("utf-8-sig", "utf-8") else encoding
        raise DataError(f"{shown} is not {name} (invalid byte 0x{raw[exc.start]:02x} on line {line}): "
                        "re-save it as UTF-8 or pass its encoding with --encoding (e.g. --encoding cp1252)") from None


def read_text(path: Path, shown: str, opts: ReadOptions) -> str:
    return decode(read_bytes(path, shown), shown, opts.encoding)


# --------------------------------------------------------------------------------------------
# Delimited text: delimiter and quoting

@dataclass(frozen=True)
class Dialect:
    delimiter: str
    quoted: bool  # RFC 4180: fields may be quoted, "" is a quote inside one

    def reader_options(self) -> dict:
        if self.quoted:
            return {"delimiter": self.delimiter, "quotechar": '"', "doublequote": True}
        return {"delimiter": self.delimiter, "quoting": csv.QUOTE_NONE}


def _first_line(text: str) -> str:
    end = text.find("\n")
    return (text if end < 0 else text[:end]).rstrip("\r")


@dataclass(frozen=True)
class Head:
    """What delimiter and quoting detection read of a delimited file: its first line and a sample
    from the line holding its first quote (the header prepended), never the whole file."""

    first_line: str
    quote_sample: str | None  # None: the file holds no quote
    cut: bool  # the file goes on after the sample (its last record may be partial)
    quote_line: int  # the line number of the first quote (for messages)


def head_of_text(text: str) -> Head:
    header, first = _first_line(text), text.find('"')
    if first < 0:
        return Head(header, None, False, 0)
    start = text.rfind("\n", 0, first) + 1
    sample = text[start:start + QUOTING_SAMPLE]
    return Head(header, header + "\n" + sample if start > 0 else sample, start + QUOTING_SAMPLE < len(text),
                text.count("\n", 0, first) + 1)


def head_of_utf8(raw: bytes, skip: int = 0) -> Head:
    """head_of_text(raw[skip:].decode()) without decoding (or copying) the whole file; a sample is
    QUOTING_SAMPLE bytes, not characters. A window cut inside a character drops that character; a
    byte that is not UTF-8 is left for the reader, whose refusal sends the file to the full decode
    and its message."""
    end = raw.find(b"\n", skip)
    header = raw[skip:end if end >= 0 else len(raw)].decode("utf-8", errors="replace").rstrip("\r")
    first = raw.find(b'"', skip)
    if first < 0:
        return Head(header, None, False, 0)
    start = max(raw.rfind(b"\n", skip, first) + 1, skip)
    sample = raw[start:start + QUOTING_SAMPLE].decode("utf-8", errors="ignore")
    return Head(header, header + "\n" + sample if start > skip else sample, start + QUOTING_SAMPLE < len(raw),
                raw.count(b"\n", skip, first) + 1)


def utf8_start(raw: bytes, encoding: str) -> int | None:
    """Where the UTF-8 text of `raw` starts (past a UTF-8 byte-order mark) when `encoding` reads
    it as UTF-8, else None (UTF-16 and other codecs are decoded)."""
    if encoding == "auto":
        if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return None
        return len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    name = codecs.lookup(encoding).name
    if name == "utf-8-sig":
        return len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    return 0 if name == "utf-8" else None


_BLANK_BYTES = re.compile(rb"\s*")


def sniff_delimiter(head: Head, fmt: str, header: bool, opts: ReadOptions, shown: str) -> str:
    """--delimiter, else a tab for TSV; for CSV the one delimiter whose header holds every named
    column (a ';' export of a European spreadsheet), else ','."""
    given = DELIMITERS[opts.delimiter]
    if given:
        return given
    if fmt == "tsv" or not header or not opts.columns:
        return "\t" if fmt == "tsv" else ","
    line = head.first_line
    fits = [d for d in (",", ";", "|", "\t")
            if set(opts.columns) <= {f.strip() for f in next(csv.reader([line], delimiter=d), [])}]
    if len(fits) > 1 and "," not in fits:
        raise DataError(f"{shown}: the header splits into the named columns with several delimiters "
                        f"({' '.join(repr(d) for d in fits)}): pass --delimiter")
    return fits[0] if len(fits) == 1 else ","


def _consistent(sample: str, dialect: Dialect, cut: bool) -> tuple[bool, bool]:
    """(every record has the first record's field count and parses, some field needed quoting).

    Read as RFC 4180, a file is consistent only if no unquoted field holds a quote: a writer that
    quotes (QUOTE_MINIMAL or more) quotes every such field, so writing the records back with
    QUOTE_MINIMAL never needs more quote characters than the file has.
    """
    options = dialect.reader_options()
    if dialect.quoted:
        options["strict"] = True
    lines = sample.count("\n") + 1
    records, starts = [], []
    reader = csv.reader(io.StringIO(sample, newline=""), **options)
    start = 1
    try:
        for record in reader:
            if record:
                records.append(record)
                starts.append(start)
            start = reader.line_num + 1
    except csv.Error:
        if not (cut and reader.line_num >= lines - 1):  # the sample may end inside a quoted field
            return False, False
    if cut and records:
        records.pop()  # the sample may end inside a record
        sample = "\n".join(sample.split("\n")[:starts.pop() - 1])
    if not records:
        return True, False
    width = len(records[0])
    ok = all(len(r) == width for r in records)
    if not dialect.quoted:
        return ok, False
    out = io.StringIO()
    csv.writer(out, delimiter=dialect.delimiter, lineterminator="\n").writerows(records)
    ok = ok and out.getvalue().count('"') <= sample.count('"')
    special = any(dialect.delimiter in f or "\n" in f or "\r" in f or '"' in f for r in records for f in r)
    return ok, special


def detect_quoting(head: Head, delimiter: str, shown: str) -> bool:
    """Whether fields are RFC 4180-quoted (pandas' and the csv module's output) or quotes are plain
    text (GLUE's SST-2 and MRPC, bare " inside texts).

    Both readings are tried on the text from the first line holding a quote: a reading that breaks
    records (a field with a stray quote, ragged field counts) is out. When both read cleanly the file
    is quoted only if some quoted field needed it (it holds the delimiter, a newline or a doubled "")
    or every header field is quoted (QUOTE_ALL writers); a bare-quote file never has those.
    """
    if head.quote_sample is None:
        return False
    header, sample, cut = head.first_line, head.quote_sample, head.cut
    quoted_ok, special = _consistent(sample, Dialect(delimiter, True), cut)
    bare_ok, _ = _consistent(sample, Dialect(delimiter, False), cut)
    if quoted_ok and not bare_ok:
        return True
    if bare_ok and not quoted_ok:
        return False
    if quoted_ok:
        fields = header.split(delimiter)
        all_quoted = all(len(f) >= 2 and f[0] == f[-1] == '"' for f in fields)
        return special or all_quoted
    raise DataError(f"{shown} has inconsistent quoting from line {head.quote_line} on: read with RFC 4180 quoting or with "
                    "quotes as plain text, its records do not split into the same columns; fix the file, or "
                    "pass --quoting csv (quoted fields, \"\" inside them) or --quoting none (quotes are text)")


def dialect(head: Head, shown: str, fmt: str, header: bool, opts: ReadOptions) -> Dialect:
    delimiter = sniff_delimiter(head, fmt, header, opts, shown)
    if opts.quoting != "auto":
        return Dialect(delimiter, opts.quoting == "csv")
    return Dialect(delimiter, detect_quoting(head, delimiter, shown))


def _arrow_delimited(body: bytes, first_line: str, d: Dialect, header: bool) -> pd.DataFrame | None:
    """The file through pyarrow's multi-threaded CSV reader: Arrow string columns, no Python object
    per field while parsing (pandas' reader with dtype=str peaks near 1 KB a row). None when pyarrow
    refuses the file: pandas then reads it and words the error (or reads what pyarrow will not, such
    as whitespace-only lines, which pandas skips)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    first = next(csv.reader([first_line], **d.reader_options()), [])
    skip = 0
    if isinstance(body, tuple):  # (raw bytes, where the text starts): no copy of a large file
        body, skip = body
    names = first if header else [str(i) for i in range(len(first))]
    if not names or len(set(names)) != len(names):
        return None  # duplicate header names: pandas' renaming (a, a.1) is what users have seen
    try:
        table = pacsv.read_csv(
            pa.py_buffer(body).slice(skip),  # UTF-8; a string column that is not is refused (ArrowInvalid)
            read_options=pacsv.ReadOptions(column_names=names, skip_rows=1 if header else 0),
            parse_options=pacsv.ParseOptions(delimiter=d.delimiter, quote_char='"' if d.quoted else False,
                                             double_quote=True, newlines_in_values=d.quoted,
                                             ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    return arrow_frame(table)


def _read_delimited(text: str, shown: str, fmt: str, header: bool, opts: ReadOptions) -> pd.DataFrame:
    head = head_of_text(text)
    d = dialect(head, shown, fmt, header, opts)
    frame = _arrow_delimited(text.encode("utf-8"), head.first_line, d, header)
    if frame is not None and frame.shape[1] > 0:
        return frame
    quoting = dict(quotechar='"', doublequote=True) if d.quoted else dict(quoting=csv.QUOTE_NONE)
    try:
        frame = pd.read_csv(io.StringIO(text), sep=d.delimiter, header=0 if header else None, dtype=str,
                            keep_default_na=False, na_filter=False, engine="c", **quoting)
    except pd.errors.ParserError as exc:
        raise DataError(f"{shown} is not valid {fmt.upper()}: {str(exc).strip()}; check the delimiter "
                        f"(--delimiter, --format) and the quoting (--quoting)") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{shown} is empty") from None
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _read_utf8_delimited(raw: bytes, shown: str, fmt: str, header: bool, opts: ReadOptions) -> pd.DataFrame | None:
    """A UTF-8 CSV/TSV straight from its bytes into Arrow: no decoded copy of the file (a str of a
    1 GB file is 1-4 GB: one emoji makes every character 4 bytes). None when anything is off (not
    UTF-8, empty, a detection or parse problem): the decoding path then reads it and words the error."""
    skip = utf8_start(raw, opts.encoding)
    if skip is None or _BLANK_BYTES.fullmatch(raw, skip):
        return None
    head = head_of_utf8(raw, skip)
    try:
        d = dialect(head, shown, fmt, header, opts)
    except DataError:
        return None  # said again, after the file is known to decode, by the decoding path
    frame = _arrow_delimited((raw, skip), head.first_line, d, header)
    return frame if frame is not None and frame.shape[1] > 0 else None


def csv_line(text: str, d: Dialect, header: bool, index: int) -> int | None:
    """The line the `index`-th data record starts on, skipping blank lines as pandas does."""
    limit = csv.field_size_limit(2**31 - 1)
    try:
        reader = csv.reader(io.StringIO(text, newline=""), **d.reader_options())
        seen = -2 if header else -1
        start = 1
        for record in reader:
            # pandas skips empty and whitespace-only lines (but keeps a quoted "" record).
            if record and not (len(record) == 1 and record[0] and not record[0].strip(" \t")):
                seen += 1
                if seen == index:
                    return start
            start = reader.line_num + 1
    finally:
        csv.field_size_limit(limit)
    return None


# --------------------------------------------------------------------------------------------
# JSON

def _read_jsonl(text: str, shown: str) -> list[dict]:
    rows = []
    # Split on \n only: str.splitlines() also breaks on U+0085 and U+2028, which occur inside texts.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            # strict=False lets raw control characters inside strings through, so that a tab is accepted
            # as in the other formats and a NUL is refused by data._texts with a message naming it.
            row = json.loads(line, strict=False)
        except json.JSONDecodeError as exc:
            raise DataError(f"{shown} line {number} is not JSON ({exc.msg}); expected one object per line "
                            "or one JSON array") from None
        if not isinstance(row, dict):
            raise DataError(f"{shown} line {number} is a JSON {type(row).__name__}, expected an object per line")
        rows.append(row)
    return rows


def _records(doc, shown: str, field: str | None) -> pd.DataFrame:
    """The rows of one JSON document: an array of objects, an object holding one under `field`, or
    pandas' default `to_json()` layout (column -> {row -> value})."""
    if field is not None:
        if not isinstance(doc, dict) or field not in doc:
            keys = ", ".join(map(repr, list(doc)[:10])) if isinstance(doc, dict) else f"a JSON {type(doc).__name__}"
            raise DataError(f"{shown} has no key {field!r} at the top (it holds {keys}): set --json-field")
        doc = doc[field]
    if isinstance(doc, dict):
        if doc and all(isinstance(v, dict) for v in doc.values()):
            return pd.DataFrame({k: pd.Series(v, dtype=object) for k, v in doc.items()}).reset_index(drop=True)
        arrays = [k for k, v in doc.items() if isinstance(v, list) and v and isinstance(v[0], dict)]
        if arrays:
            raise DataError(f"{shown} holds its rows in a list under {arrays[0]!r}: pass --json-field {arrays[0]}")
        doc = [doc]
    if not isinstance(doc, list):
        raise DataError(f"{shown} is a JSON {type(doc).__name__}, expected an array of objects or an object per line")
    for i, row in enumerate(doc):
        if not isinstance(row, dict):
            raise DataError(f"{shown} row {i + 1} is a JSON {type(row).__name__}, expected an object")
    return pd.DataFrame.from_records(doc)


def json_layout(text: str, field: str | None) -> str:
    """'lines' (JSON Lines) or 'document' (one array or object, possibly pretty-printed)."""
    if field is not None or text.lstrip().startswith("["):
        return "document"
    first = next((line for line in text.split("\n") if line.strip()), "")
    try:
        json.loads(first, strict=False)
    except json.JSONDecodeError:
        try:
            json.loads(text, strict=False)
            return "document"
        except json.JSONDecodeError:
            return "lines"  # _read_jsonl names the broken line
    return "lines"


def _read_json(text: str, shown: str, field: str | None) -> pd.DataFrame:
    if json_layout(text, field) == "document":
        try:
            doc = json.loads(text, strict=False)
        except json.JSONDecodeError as exc:
            raise DataError(f"{shown} is not JSON ({exc.msg} on line {exc.lineno})") from None
        return _records(doc, shown, field)
    rows = _read_jsonl(text, shown)
    if len(rows) == 1:  # one line may be a whole document (json.dump of {"data": [...]})
        return _records(rows[0], shown, None)
    return pd.DataFrame.from_records(rows)


# --------------------------------------------------------------------------------------------
# Binary columnar files

def arrow_frame(table) -> pd.DataFrame:
    """A pyarrow table as a frame whose string columns stay Arrow-backed (pd.ArrowDtype): a text
    column of millions of rows is then one buffer, not a Python object per row (job/texts.py).
    Other columns convert as pandas always has (numbers to numpy, lists to objects)."""
    import pyarrow as pa

    def mapper(t):
        return pd.ArrowDtype(t) if pa.types.is_string(t) or pa.types.is_large_string(t) else None

    return table.to_pandas(types_mapper=mapper)


def _read_arrow(path: Path, shown: str) -> pd.DataFrame:
    """An Arrow IPC file: `datasets` writes the stream format, other tools the file format."""
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            try:
                table = pa.ipc.open_stream(source).read_all()
            except pa.ArrowInvalid:
                source.seek(0)
                table = pa.ipc.open_file(source).read_all()
    except Exception as exc:
        raise DataError(f"{shown} is not a readable Arrow file ({type(exc).__name__}: {exc})") from None
    return arrow_frame(table)


def read_table(path: Path, shown: str, fmt: str, header: bool, opts: ReadOptions = ReadOptions()) -> pd.DataFrame:
    """Read one file as a frame of its columns; never guesses NaN from text like 'NA'."""
    if fmt in ("parquet", "arrow"):
        if fmt == "parquet":
            import pyarrow.parquet as pq

            try:
                frame = arrow_frame(pq.read_table(path))
            except Exception as exc:
                raise DataError(f"{shown} is not a readable Parquet file ({type(exc).__name__}: {exc})") from None
        else:
            frame = _read_arrow(path, shown)
        if not header:
            frame.columns = [str(i) for i in range(frame.shape[1])]
        return frame
    raw = read_bytes(path, shown)
    if fmt in ("csv", "tsv"):
        frame = _read_utf8_delimited(raw, shown, fmt, header, opts)
        if frame is not None:
            return frame
    text = decode(raw, shown, opts.encoding)
    del raw  # a large file: the text alone from here on
    if not text.strip():
        raise DataError(f"{shown} is empty")
    if fmt in ("jsonl", "json"):
        if not header:
            raise ConfigError("--no-header applies to CSV and TSV only; JSON rows name their fields")
        return _read_json(text, shown, opts.json_field)
    return _read_delimited(text, shown, fmt, header, opts)


def record_line(path: Path, shown: str, fmt: str, header: bool, opts: ReadOptions, index: int) -> int | None:
    """The number a message gives the frame's row `index` (0-based), as the user counts it.

    CSV/TSV and JSON Lines: the line of the file the row starts on, as an editor shows it (a CSV
    header is line 1; blank lines and newlines inside quoted fields count). A JSON array, Parquet
    and Arrow: the 1-based row. Only error messages need it, so it reads the file again.
    """
    if fmt in ("parquet", "arrow"):
        return index + 1
    text = read_text(path, shown, opts)
    if fmt in ("jsonl", "json"):
        if json_layout(text, opts.json_field) == "document":
            return index + 1
        seen = -1
        for number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                seen += 1
                if seen == index:
                    return number
        return None
    return csv_line(text, dialect(head_of_text(text), shown, fmt, header, opts), header, index)
