"""Read raw corpora (JSONL, JSONL.gz/.zst, Parquet) as numbered records.

Every physical line (or Parquet row) becomes exactly one :class:`RawRecord`, so
that every input document can be accounted for in the manifest, including the
broken ones: parsing happens later, in worker processes, and a record that cannot
be parsed is skipped with a reason, never silently.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import io
import itertools
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

logger = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".zst", ".zstd")
PARQUET_SUFFIXES = (".parquet", ".pq")


class InputError(ValueError):
    """A setup mistake about the inputs (missing, unreadable, unknown format)."""


class RecordSkip(Exception):
    """A record that cannot become a document; ``reason`` goes into the manifest."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class RawRecord:
    """One input line or row, not yet parsed.

    ``payload`` is the line's bytes for JSONL, or an ``(id, text, url)`` triple already
    read by Arrow for Parquet. ``line`` is 1-based (the row number for Parquet).
    """

    file: int
    line: int
    payload: bytes | tuple[Any, Any, Any] | None


@dataclass(frozen=True)
class Document:
    """A parsed record: its id, its text and, when the input has one, its URL."""

    doc_id: str
    text: str
    url: str | None = None


@dataclass(frozen=True)
class InputPiece:
    """Input file ``file_index`` from byte ``start`` to ``end`` (None: to the end of the file)."""

    file_index: int
    path: str
    start: int = 0
    end: int | None = None
    # Lines of the file before ``start``: the piece's first line is ``first_line + 1``.
    first_line: int = 0

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.end is None

    def to_json(self) -> dict:
        return asdict(self)


def input_format(path: str | Path) -> str:
    name = str(path).lower()
    for suffix in COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise InputError(
        f"input {path}: unknown format; expected one of "
        f"{', '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES)} (JSONL optionally .gz, .bz2 or .zst)")


def expand_inputs(patterns: list[str]) -> list[str]:
    """Files, directories (searched recursively) and globs -> sorted, checked file list.

    Each file is named by its absolute path (``os.path.abspath``: symbolic links are kept as
    given), so the manifest's ``file`` field is the same whether the corpus was named by a
    relative or an absolute path. Raises :class:`InputError` for a path that does not exist or cannot be read,
    before any work starts.
    """
    if not patterns:
        raise InputError("no input given: pass --input FILE [FILE ...]")
    files: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise InputError(f"input pattern {pattern} matches no file")
            files.extend(m for m in matches if os.path.isfile(m))
        elif os.path.isdir(pattern):
            found = sorted(str(p) for p in Path(pattern).rglob("*") if p.is_file() and _known(p))
            if not found:
                raise InputError(f"input directory {pattern} holds no JSONL or Parquet file")
            files.extend(found)
        elif os.path.exists(pattern):
            files.append(pattern)
        else:
            raise InputError(f"input not found: {pattern}")
    for path in files:
        input_format(path)
        if not os.access(path, os.R_OK):
            raise InputError(f"input {path} is not readable (permission denied)")
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise InputError(f"input {path} cannot be opened: {exc.strerror}") from None
    seen = set()
    unique = [f for f in map(os.path.abspath, files) if not (f in seen or seen.add(f))]
    return unique


def _known(path: Path) -> bool:
    try:
        input_format(path)
        return True
    except InputError:
        return False


class _ZstdReader(io.RawIOBase):
    """A .zst file's content, frame after frame; a stream cut inside a frame raises EOFError
    (zstandard's stream_reader ends quietly there, and the cut documents would vanish)."""

    def __init__(self, path: str) -> None:
        import zstandard

        self._zstd = zstandard
        self._raw = open(path, "rb")
        self._d = zstandard.ZstdDecompressor().decompressobj()
        self._pending = b""
        self._in_frame = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chunk = self._raw.read(1 << 20)
            if not chunk:
                if self._in_frame:
                    raise EOFError("compressed stream ended inside a frame (truncated file)")
                return 0
            self._feed(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _feed(self, chunk: bytes) -> None:
        while chunk:
            try:
                self._pending += self._d.decompress(chunk)
            except self._zstd.ZstdError as exc:
                raise ValueError(f"corrupt zstd data: {exc}") from None
            self._in_frame = not self._d.eof
            chunk = self._d.unused_data if self._d.eof else b""
            if self._d.eof:
                self._d = self._zstd.ZstdDecompressor().decompressobj()

    def close(self) -> None:
        self._raw.close()
        super().close()


def _open_binary(path: str) -> io.BufferedIOBase:
    """A file's bytes, decompressed; a truncated .gz/.bz2/.zst raises EOFError where it is cut."""
    lower = path.lower()
    if lower.endswith(".gz"):
        return gzip.open(path, "rb")
    if lower.endswith(".bz2"):
        return bz2.open(path, "rb")
    if lower.endswith((".zst", ".zstd")):
        return io.BufferedReader(_ZstdReader(path))
    return open(path, "rb")


def iter_jsonl(path: str, file_index: int, start: int = 0, end: int | None = None,
               first_line: int = 0) -> Iterator[RawRecord]:
    """The lines of ``path`` (bytes ``start`` to ``end`` of a plain file; lines numbered from ``first_line + 1``)."""
    with _open_binary(path) as f:
        if start:
            f.seek(start)
        pos = start
        for line_no, line in enumerate(f, start=first_line + 1):
            if end is not None and pos >= end:
                return
            pos += len(line)
            yield RawRecord(file_index, line_no, line)


def iter_parquet(path: str, file_index: int, text_key: str, id_key: str,
                 batch_size: int = 1024, url_key: str | None = None) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = set(pf.schema_arrow.names)
    if text_key not in names:
        # Same outcome as a JSONL line without the key: every row is counted and skipped.
        logger.warning("%s has no column '%s' (columns: %s)", path, text_key, ", ".join(sorted(names)))
        for row in range(1, pf.metadata.num_rows + 1):
            yield RawRecord(file_index, row, None)
        return
    columns = [text_key] + ([id_key] if id_key in names and id_key != text_key else [])
    if url_key and url_key in names and url_key not in columns:
        columns.append(url_key)
    row = 0
    for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
        texts = batch.column(text_key).to_pylist()
        none = [None] * len(texts)
        ids = batch.column(id_key).to_pylist() if id_key in columns[1:] else none
        urls = batch.column(url_key).to_pylist() if url_key and url_key in columns[1:] else none
        for doc_id, text, url in zip(ids, texts, urls):
            row += 1
            yield RawRecord(file_index, row, (doc_id, text, url))


def iter_records(files: list[str], text_key: str, id_key: str,
                 stats: dict[str, Any] | None = None, url_key: str | None = None) -> Iterator[RawRecord]:
    """All records of all files, in order (see :func:`iter_pieces`)."""
    yield from iter_pieces([InputPiece(i, f) for i, f in enumerate(files)], text_key, id_key, stats, url_key)


def iter_pieces(pieces: Iterable[InputPiece], text_key: str, id_key: str,
                stats: dict[str, Any] | None = None, url_key: str | None = None) -> Iterator[RawRecord]:
    """The records of each :class:`InputPiece`, in order. A file that
    breaks mid-read (truncated gzip, corrupt Parquet) yields one record with payload ``None``
    and a ``read_error`` marker in ``stats['read_errors']``, and reading goes on with the next."""
    for piece in pieces:
        path, index = piece.path, piece.file_index
        count = 0
        try:
            if input_format(path) == "parquet":
                it = iter_parquet(path, index, text_key, id_key, url_key=url_key)
            else:
                it = iter_jsonl(path, index, piece.start, piece.end, piece.first_line)
            for record in it:
                count += 1
                yield record
        except (OSError, EOFError, ValueError) as exc:
            # Anything after the break is unreadable; say so once, in the manifest too.
            logger.error("%s: read error after %d records: %s", path, count, exc)
            if stats is not None:
                stats.setdefault("read_errors", {})[path] = str(exc)
            yield RawRecord(index, piece.first_line + count + 1, _ReadError(str(exc)))
            continue
        if count == 0 and piece.whole:
            logger.warning("%s is empty", path)
            if stats is not None:
                stats.setdefault("empty_files", []).append(path)


class _ReadError(str):
    """Marks the record standing for the unreadable rest of a file."""


def _decode_line(payload: bytes) -> str:
    try:
        line = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordSkip("invalid_utf8", f"byte {exc.start}") from None
    # A BOM starts a file saved by some editors, and every file joined after it with cat.
    return line[1:] if line.startswith("\ufeff") else line


# A JSON escape of a UTF-16 surrogate: the only way a string that is not valid UTF-8 gets
# past the decoding of the line (a lone one cannot be written out again).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _check_encodable(value: Any, field: str) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RecordSkip("invalid_utf8", f"lone surrogate in {field} at character {exc.start}") from None


def parse_record(record: RawRecord, text_key: str, id_key: str, file_name: str) -> tuple[str, str]:
    """A raw record -> ``(doc_id, text)``; raises :class:`RecordSkip` with the reason."""
    doc = parse_document(record, text_key, id_key, file_name)
    return doc.doc_id, doc.text


def parse_document(record: RawRecord, text_key: str, id_key: str, file_name: str,
                   url_key: str | None = None) -> Document:
    """A raw record -> :class:`Document` (the URL from ``url_key`` when it is a string);
    raises :class:`RecordSkip` with the reason."""
    payload = record.payload
    url = None
    default_id = f"{file_name}:{record.line}"
    if isinstance(payload, _ReadError):
        raise RecordSkip("read_error", str(payload))
    if payload is None:
        raise RecordSkip("missing_text_key")
    if isinstance(payload, tuple):
        doc_id, text, url = payload
    else:
        line = _decode_line(payload)
        if not line.strip():
            raise RecordSkip("blank_line")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RecordSkip("invalid_json", exc.msg) from None
        if not isinstance(obj, dict):
            raise RecordSkip("not_an_object")
        if text_key not in obj:
            raise RecordSkip("missing_text_key")
        text, doc_id = obj[text_key], obj.get(id_key)
        url = obj.get(url_key) if url_key else None
        if _SURROGATE_ESCAPE.search(line):
            _check_encodable(text, "text")
            _check_encodable(doc_id, "id")
    if text is None:
        raise RecordSkip("null_text")
    if not isinstance(text, str):
        raise RecordSkip("text_not_string", type(text).__name__)
    if not text.strip():
        raise RecordSkip("empty_text")
    return Document(default_id if doc_id is None else str(doc_id), text, url if isinstance(url, str) else None)


SAMPLE_LINES = 100


def check_text_key(files: list[str], text_key: str) -> None:
    """Raise :class:`InputError` for a file where ``text_key`` is surely wrong, before any work.

    A Parquet file without the column, or a JSONL file where none of the objects in its
    first :data:`SAMPLE_LINES` lines has the key: every document of it would be dropped.
    A file whose first lines hold no object at all is left to the per-line accounting.
    """
    for path in files:
        if input_format(path) == "parquet":
            names = _parquet_columns(path)
            if names is not None and text_key not in names:
                raise InputError(f"input {path} has no column '{text_key}' (columns: {_listing(names)}); "
                                 f"pass --text-key with one of them")
            continue
        keys = _keys_at_start(path, text_key)
        if keys:
            raise InputError(f"input {path}: no object in the first {SAMPLE_LINES} lines has the text key "
                             f"'{text_key}' (keys seen: {_listing(keys)}); pass --text-key with one of them")


def _parquet_columns(path: str) -> list[str] | None:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).schema_arrow.names
    except (OSError, ValueError):
        return None     # a corrupt file: counted as a read error when it is read


def _keys_at_start(path: str, text_key: str) -> set[str]:
    """The keys of the objects in the file's first lines; empty as soon as one has ``text_key``."""
    keys: set[str] = set()
    try:
        with _open_binary(path) as f:
            for line in itertools.islice(f, SAMPLE_LINES):
                try:
                    obj = json.loads(_decode_line(line))
                except (RecordSkip, json.JSONDecodeError):
                    continue
                if isinstance(obj, dict):
                    if text_key in obj:
                        return set()
                    keys.update(obj)
    except Exception:  # noqa: BLE001 - any read failure is counted when the file is read for real
        return set()
    return keys


def _listing(names: Iterable[str], limit: int = 20) -> str:
    names = sorted(names)
    shown = ", ".join(n.encode("utf-8", "backslashreplace").decode("utf-8") for n in names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
