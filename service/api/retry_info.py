"""A refused call's ``google.rpc.Status`` with ``RetryInfo``, as the ``grpc-status-details-bin``
trailer that grpcio-status would write (not installed: the few lines are here instead).

Clients built on the richer error model (``status.FromError`` in Go, ``rpc_status`` in
Python) read the retry delay from it; the REST gateway renders it into the JSON error's
``details`` and a ``Retry-After`` header.
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

__all__ = ["STATUS_DETAILS_KEY", "retry_info_trailer"]

STATUS_DETAILS_KEY = "grpc-status-details-bin"


def retry_info_trailer(
    code: grpc.StatusCode, message: str, retry_after: float
) -> tuple[str, bytes]:
    """The trailer for a call ending with ``code`` and ``message`` (both must match the call's)."""
    milliseconds = math.ceil(retry_after * 1000)
    delay = duration_pb2.Duration(
        seconds=milliseconds // 1000, nanos=(milliseconds % 1000) * 1_000_000
    )
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return STATUS_DETAILS_KEY, status.SerializeToString()
