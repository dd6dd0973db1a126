"""Errors raised on bad input; each message names what was wrong and where."""


class MMCompressError(Exception):
    """Base class for errors the library raises on purpose."""


class CatalogError(MMCompressError, ValueError):
    """A catalog file or array does not match what is expected.

    The message names the file, column and row where known, with expected vs found.
    """

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        column: str | None = None,
        row: int | object | None = None,
        expected: object = None,
        found: object = None,
    ) -> None:
        parts = [problem]
        if file is not None:
            parts.append(f"file={file}")
        if column is not None:
            parts.append(f"column={column!r}")
        if row is not None:
            parts.append(f"row={row}")
        if expected is not None:
            parts.append(f"expected={expected}")
        if found is not None:
            parts.append(f"found={found}")
        super().__init__("; ".join(parts))
        self.file, self.column, self.row = file, column, row
        self.expected, self.found = expected, found


class CodecError(MMCompressError, ValueError):
    """A codec spec, its input or a saved codec file is invalid."""


class ArtifactError(MMCompressError, ValueError):
    """A saved artifact is missing, truncated, tampered with or of an unknown format version."""


class ConfigError(MMCompressError, ValueError):
    """A params file, an override or a setting is unknown, of the wrong type or out of range;
    the message names each key with what was found and what is allowed."""


class TransientError(MMCompressError):
    """A failure that may heal by itself (a service unreachable): orchestrators retry it with
    back-off, where they fail every other ``MMCompressError`` at once."""
