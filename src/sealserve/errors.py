"""The root error of sealserve and its canonical codes.

Every error a user can cause is a `SealserveError` with a one-line, actionable message and a
canonical code named after gRPC's status codes. Nothing here knows about HTTP or gRPC: the
adapters map codes at the edge. Messages never contain secrets.
"""

from __future__ import annotations

import enum


class Code(enum.Enum):
    """Canonical error codes (the names and numbers of gRPC's status codes)."""

    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class SealserveError(Exception):
    """Root of every error sealserve raises on purpose.

    `message` is the one line shown to the user; `code` is what an API adapter maps to a
    status. Subclasses fix the code; callers may override it.
    """

    code: Code = Code.UNKNOWN

    def __init__(self, message: str, *, code: Code | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class InvalidArgument(SealserveError):
    code = Code.INVALID_ARGUMENT


class NotFound(SealserveError):
    code = Code.NOT_FOUND


class AlreadyExists(SealserveError):
    code = Code.ALREADY_EXISTS


class PermissionDenied(SealserveError):
    code = Code.PERMISSION_DENIED


class FailedPrecondition(SealserveError):
    code = Code.FAILED_PRECONDITION


class DataLoss(SealserveError):
    """Stored data is corrupted, tampered with, or cannot be authenticated."""

    code = Code.DATA_LOSS
