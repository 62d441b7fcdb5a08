"""Error types with the exit codes the CLI maps them to.

* :class:`InputError` (exit 2) -- the user's input is malformed or impossible: one line that names
  the file, the field and the offending value.
* :class:`InfeasibleError` (exit 3) -- the input is valid but no plan satisfies it; carries an
  explanation (what overflows, by how much, and what would fix it).
"""

from __future__ import annotations

from typing import Any


class ApexError(Exception):
    """Base class of every error apex-opt reports to the user."""

    exit_code = 1


class InputError(ApexError):
    """Bad input: malformed file, unknown/missing field, impossible value, unknown name."""

    exit_code = 2

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None,
                 value: Any = None):
        parts = []
        if source:
            parts.append(str(source))
        if field:
            parts.append(f"field '{field}'")
        prefix = ": ".join(parts)
        self.reason = message  # without source, field and value (to re-raise it elsewhere)
        if field is not None and value is not None:
            message = f"{message} (got {value!r})"
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.source = source
        self.field = field
        self.value = value


class InfeasibleError(ApexError):
    """A valid request that cannot be satisfied; ``explanation`` is human readable,
    ``details`` is the machine-readable form (goes into ``--json``)."""

    exit_code = 3

    def __init__(self, explanation: str, details: dict | None = None):
        super().__init__(explanation)
        self.explanation = explanation
        self.details = details or {}


class ApexWarning(UserWarning):
    """Something the user should know that does not stop the run (units that look wrong, parts of
    a model that are not planned for). The CLI prints it as one ``apex-opt: warning: ...`` line on
    stderr; library users get an ordinary :mod:`warnings` warning they can filter."""


def warn(message: str) -> None:
    """Issue an :class:`ApexWarning` attributed to the caller's caller."""
    import warnings

    warnings.warn(message, ApexWarning, stacklevel=3)
