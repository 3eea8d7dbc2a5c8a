"""Domain errors. The core raises these; `ams.grpc_common` maps them to gRPC status codes in one place."""
from __future__ import annotations


class AMSError(Exception):
    """Base of every domain error."""


class InvalidArgument(AMSError):
    """The request is malformed (bad frame, wrong shape, corrupt clip)."""


class NotFound(AMSError):
    """The named session does not exist (or has expired)."""


class Unauthenticated(AMSError):
    """The caller did not identify itself."""


class PermissionDenied(AMSError):
    """The caller is not allowed to touch this resource (e.g. another device's session)."""


class ResourceExhausted(AMSError):
    """A limit was hit: message size, number of sessions, queue length."""


class OutOfRange(AMSError):
    """A value past what the state allows (e.g. a clip whose timestamps do not follow the last one's)."""


class Unavailable(AMSError):
    """A dependency (Redis, the teacher) is down; retrying later may work."""


class FailedPrecondition(AMSError):
    """The state does not allow this operation (e.g. an update whose base the device does not hold)."""
