"""Reading files a user or an earlier run wrote, with one-line errors that name the file, the line
and what was expected: UTF-8 text (a prompt file, a data file) and JSON lines (predictions.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

from promptrl.errors import UserError


def decode_utf8(data: bytes, path) -> str:
    """`data` as text, or a UserError naming the line of the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UserError(f"{path} line {line} is not UTF-8 text (byte 0x{data[e.start]:02x}); "
                        "expected a UTF-8 file (re-save it as UTF-8)") from None


def read_text(path, what: str = "file") -> str:
    """The whole file as UTF-8 text; a UserError (one line) for a missing, unreadable or
    non-UTF-8 file. `what` names it in the message, e.g. "prompt_file"."""
    path = Path(path).expanduser()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{what} {str(path)!r} does not exist") from None
    except OSError as e:  # a directory, no permission
        raise UserError(f"cannot read {what} {str(path)!r} ({e.strerror or type(e).__name__})") from None
    return decode_utf8(data, path)


def read_jsonl_rows(path, truncate_torn: bool = False) -> list[dict]:
    """The JSON objects of a JSON-lines file, one a line, blank lines skipped. A last line without
    its newline is a write cut short (a kill mid-append): it is dropped, and with `truncate_torn`
    also cut from the file, so the next append starts a line of its own. Any other line that is
    not UTF-8 or not a JSON object is damage no kill explains: a UserError naming the file and
    the line. A missing file has no rows."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    complete = data[:data.rfind(b"\n") + 1]
    if truncate_torn and len(complete) < len(data):
        with path.open("r+b") as f:
            f.truncate(len(complete))
    rows = []
    for number, line in enumerate(decode_utf8(complete, path).split("\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} line {number} is not JSON ({e.msg} at column {e.colno}); expected one JSON object "
                            "a line (only a torn last line is dropped)") from None
        if not isinstance(row, dict):
            raise UserError(f"{path} line {number} is a JSON {type(row).__name__}; expected one JSON object a line")
        rows.append(row)
    return rows
