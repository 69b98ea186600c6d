"""The test-only ``gwroute.v1`` proto, compiled at test time into a temporary directory.

It is not in generated/: the gateway must route it from its annotations alone.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from functools import cache
from pathlib import Path
from types import ModuleType

import google.api
from grpc_tools import protoc

PROTO_ROOT = Path(__file__).parent / "protos"


@cache
def gwroute_modules() -> tuple[ModuleType, ModuleType]:
    """(gwroute_pb2, gwroute_pb2_grpc), compiled once per test process."""
    out = Path(tempfile.mkdtemp(prefix="gwroute-"))
    googleapis = Path(next(iter(google.api.__path__))).parent.parent
    wkt = Path(protoc.__file__).parent / "_proto"
    code = protoc.main(
        [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{googleapis}",
            f"-I{wkt}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "gwroute/v1/gwroute.proto",
        ]
    )
    assert code == 0, "protoc failed on the test proto"
    for package in (out / "gwroute", out / "gwroute" / "v1"):
        (package / "__init__.py").touch()
    sys.path.insert(0, str(out))
    return (
        importlib.import_module("gwroute.v1.gwroute_pb2"),
        importlib.import_module("gwroute.v1.gwroute_pb2_grpc"),
    )


def echo_servicer() -> object:
    """A real servicer for the test-only EchoService."""
    import grpc
    from google.protobuf import any_pb2
    from google.rpc import error_details_pb2, status_pb2

    pb, pb_grpc = gwroute_modules()

    class EchoServicer(pb_grpc.EchoServiceServicer):  # type: ignore[misc, name-defined]
        async def Echo(self, request: object, context: grpc.aio.ServicerContext) -> object:
            await context.send_initial_metadata((("x-echo", "yes"),))
            context.set_trailing_metadata((("x-echo-trailer", "done"),))
            seen = {
                k: v if isinstance(v, str) else "bin:" + v.hex()  # a "-bin" key: its bytes
                for k, v in context.invocation_metadata() or ()
            }
            return pb.EchoResponse(request=request, metadata=seen)

        async def Fail(self, request: object, context: grpc.aio.ServicerContext) -> object:
            code = next(c for c in grpc.StatusCode if c.value[0] == request.code)  # type: ignore[attr-defined]
            if code == grpc.StatusCode.OK:
                return pb.FailResponse()
            detail = any_pb2.Any()
            detail.Pack(
                error_details_pb2.ErrorInfo(
                    reason="TEST_FAILURE", domain="gwroute.test", metadata={"code": code.name}
                )
            )
            status = status_pb2.Status(
                code=code.value[0], message=f"failed with {code.name}", details=[detail]
            )
            await context.abort(
                code,
                status.message,
                (("grpc-status-details-bin", status.SerializeToString()),),
            )
            raise AssertionError("abort returned")

    return EchoServicer()
