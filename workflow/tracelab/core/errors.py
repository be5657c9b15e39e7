"""The one error type a user sees: it names the file, the row or field, and the failed check."""

from __future__ import annotations


class TraceInputError(Exception):
    """Bad input that stops one trace. The message is complete on its own, never a traceback."""

    def __init__(self, path, check: str, detail: str, *, row: int | None = None,
                 field: str | None = None, report: str | None = None):
        self.path = str(path)
        self.check = check
        self.detail = detail
        self.row = row
        self.field = field
        self.report = report
        where = self.path
        if row is not None:
            where += f", line {row}"
        if field is not None:
            where += f", field {field!r}"
        message = f"{where}: check '{check}' failed: {detail}"
        if report:
            message += f" (full report: {report})"
        super().__init__(message)
