"""A problem line that knows what it is about (container, variable, certificate), so the log formats can
give a collector fields to filter on without parsing the wording. Pure: the core's decisions return these."""

from __future__ import annotations

FIELDS = ("container", "variable", "certificate")


class Problem(str):
    """A problem line that remembers what it is about; equal to (and sorted as) its text."""

    container: str
    variable: str
    certificate: str

    def __new__(cls, text: str, *, container: str = "", variable: str = "", certificate: str = "") -> Problem:
        line = super().__new__(cls, text)
        line.container, line.variable, line.certificate = container, variable, certificate
        return line

    def fields(self) -> dict[str, str]:
        """The `extra=` for logging this line."""
        return {name: getattr(self, name) for name in FIELDS if getattr(self, name)}


def fields_of(line: str) -> dict[str, str]:
    return line.fields() if isinstance(line, Problem) else {}
