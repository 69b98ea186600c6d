"""``google.rpc.RetryInfo``, and a ``google.rpc.Status`` as the ``grpc-status-details-bin``
trailer that grpcio-status's ``rpc_status.to_status`` would write (the server does not
depend on grpcio-status: these few lines are all it would be used for).

Clients built on the richer error model (``status.FromError`` in Go, ``rpc_status`` in
Python) read the details from it; the REST gateway renders them into the JSON error's
``details`` (and a RetryInfo's delay into a ``Retry-After`` header).
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

__all__ = ["STATUS_DETAILS_KEY", "retry_info", "retry_info_trailer", "status_trailer"]

STATUS_DETAILS_KEY = "grpc-status-details-bin"


def retry_info(retry_after: float) -> error_details_pb2.RetryInfo:
    """A RetryInfo for ``retry_after`` seconds, rounded up to a whole millisecond."""
    milliseconds = math.ceil(retry_after * 1000)
    delay = duration_pb2.Duration(
        seconds=milliseconds // 1000, nanos=(milliseconds % 1000) * 1_000_000
    )
    return error_details_pb2.RetryInfo(retry_delay=delay)


def status_trailer(status: status_pb2.Status) -> tuple[str, bytes]:
    """The trailer carrying ``status`` (its code and message must match the call's)."""
    return STATUS_DETAILS_KEY, status.SerializeToString()


def retry_info_trailer(
    code: grpc.StatusCode, message: str, retry_after: float
) -> tuple[str, bytes]:
    """The trailer for a call ending with ``code`` and ``message`` and only a RetryInfo."""
    detail = any_pb2.Any()
    detail.Pack(retry_info(retry_after))
    return status_trailer(status_pb2.Status(code=code.value[0], message=message, details=[detail]))
