"""What `gmbsync` prints: rich tables for people, JSON (`--json`) for scripts, errors on stderr.

JSON is the messages' proto3 JSON (field names as in the .proto files, enums by name, times as
RFC 3339) with every field present, and int64 counts as numbers rather than proto3's strings.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table
from rich.text import Text

# Width when stdout is not a terminal: wide enough that UUIDs and times never wrap.
PIPE_WIDTH = 200

_INT64_TYPES = {
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
}
# Well-known types whose JSON form is a string or a free-form value: nothing to fix inside.
_OPAQUE = {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.Struct"}


def message_dict(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data (see the module docstring)."""
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _int64_as_numbers(message, data)
    return data


def _int64_as_numbers(message: Message, data: dict[str, Any]) -> None:
    for field in message.DESCRIPTOR.fields:
        if field.name not in data:
            continue
        repeated = field.is_repeated
        if field.type in _INT64_TYPES:
            value = data[field.name]
            data[field.name] = [int(v) for v in value] if repeated else int(value)
        elif (
            field.type == FieldDescriptor.TYPE_MESSAGE
            and field.message_type is not None
            and field.message_type.full_name not in _OPAQUE
            and not field.message_type.GetOptions().map_entry
        ):
            value = getattr(message, field.name)
            if repeated:
                for item, item_data in zip(value, data[field.name], strict=True):
                    _int64_as_numbers(item, item_data)
            else:
                _int64_as_numbers(value, data[field.name])


def when(message: Any, field: str) -> str:
    """A Timestamp field for a table: `2026-11-30 05:01:02`, or `-` when unset."""
    if not message.HasField(field):
        return "-"
    moment: datetime = getattr(message, field).ToDatetime(tzinfo=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def span(message: Any, field: str) -> str:
    """A Duration field for a table: `1h 02m 03s`, `4.2s`, or `-` when unset."""
    if not message.HasField(field):
        return "-"
    return human_duration(getattr(message, field).ToTimedelta())


def human_duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds % 1 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    return f"{minutes}m {secs:02d}s"


def enum_label(name: str, prefix: str) -> str:
    """`JOB_STATUS_PENDING` -> `pending`; an unset enum (`..._UNSPECIFIED`) -> `-`."""
    label = name.removeprefix(prefix).lower()
    return "-" if label in ("", "unspecified") else label


STATUS_STYLES = {
    "pending": "cyan",
    "processing": "blue",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
}


class Output:
    """stdout for results (a table or JSON), stderr for errors, warnings and progress."""

    def __init__(
        self, *, json_mode: bool, stdout: IO[str] | None = None, stderr: IO[str] | None = None
    ) -> None:
        self.json_mode = json_mode
        out = stdout or sys.stdout
        err = stderr or sys.stderr
        self.console = Console(
            file=out, highlight=False, width=None if out.isatty() else PIPE_WIDTH
        )
        self.stderr = Console(file=err, highlight=False, width=None if err.isatty() else PIPE_WIDTH)

    def emit(self, data: Any, render: Callable[[], None]) -> None:
        """`data` as JSON with `--json`, else what `render` prints."""
        if self.json_mode:
            self.console.file.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
        else:
            render()

    def table(
        self, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None
    ) -> None:
        table = Table(title=title, title_justify="left", header_style="bold")
        for column in columns:
            table.add_column(column, no_wrap=column in ("id", "job", "account", "user"))
        for row in rows:
            table.add_row(*(cell if isinstance(cell, Text) else Text(str(cell)) for cell in row))
        self.console.print(table)

    def fields(self, pairs: Iterable[tuple[str, Any]], *, title: str | None = None) -> None:
        """A two-column table of one object's fields."""
        table = Table(title=title, title_justify="left", show_header=False, box=None)
        table.add_column(style="bold")
        table.add_column()
        for name, value in pairs:
            table.add_row(Text(name), value if isinstance(value, Text) else Text(str(value)))
        self.console.print(table)

    def line(self, text: str | Text = "") -> None:
        self.console.print(text if isinstance(text, Text) else Text(text))

    def error(self, message: str) -> None:
        """One line on stderr: what went wrong, never a traceback."""
        text = " ".join(message.split())  # a multi-line server message stays one line
        self.stderr.print(Text(f"gmbsync: error: {text}", style="red"), soft_wrap=True)

    def note(self, message: str) -> None:
        self.stderr.print(Text(message), soft_wrap=True)


def status_text(label: str) -> Text:
    return Text(label, style=STATUS_STYLES.get(label, ""))
