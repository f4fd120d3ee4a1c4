"""SQL text as the driver sends it: written readable, sent compact.

psycopg converts a query's `%(name)s` placeholders on every execution and caches the result
only for queries of at most 4,096 characters (`psycopg._queries.MAX_CACHED_STATEMENT_LENGTH`);
the pick and the enqueue, with their comments and indentation, were longer and paid the
conversion on every call. `compact` drops comments and folds whitespace, outside quotes.
"""

from __future__ import annotations

_QUOTES = ("'", '"')


def compact(sql: str) -> str:
    """`sql` without `--` comments and with each run of whitespace made one space; quoted
    literals and identifiers are kept as written."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        char = sql[i]
        if char in _QUOTES:
            end = sql.index(char, i + 1)
            # A doubled quote inside a literal escapes it: the literal goes on.
            while end + 1 < n and sql[end + 1] == char:
                end = sql.index(char, end + 2)
            out.append(sql[i : end + 1])
            i = end + 1
        elif sql.startswith("--", i):
            newline = sql.find("\n", i)
            i = n if newline < 0 else newline
        elif char.isspace():
            while i < n and sql[i].isspace():
                i += 1
            if out and not out[-1].endswith(" "):
                out.append(" ")
        else:
            out.append(char)
            i += 1
    return "".join(out).strip()
