"""Server reflection that also answers for RPC methods, as grpcurl's `describe Service.Method`.

The stock servicer asks the descriptor pool for the file containing a symbol; protobuf's upb
backend knows messages, enums and services there but not methods (grpc/grpc#34743), so
`describe gmbsync.queue.v1.QueueService.EnqueueSync` failed with "Symbol not found". A method
lives in its service's file, so we answer with that.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer


class MethodAwareReflectionServicer(ReflectionServicer):
    # Set by grpc's base servicer; its published stubs leave private members out.
    _pool: DescriptorPool

    def _base_lookup(self, request: Any, symbol: str) -> Any:
        # The stock lookup this class overrides (private, so absent from the stubs as well).
        base: Any = super()
        return base._file_containing_symbol(request, symbol)

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        response = self._base_lookup(request, fully_qualified_name)
        if not response.HasField("error_response"):
            return response
        service_name, _, method_name = fully_qualified_name.rpartition(".")
        try:
            service = self._pool.FindServiceByName(service_name)
        except KeyError:
            return response
        if method_name not in service.methods_by_name:
            return response
        return self._base_lookup(request, service_name)


def enable_reflection(service_names: list[str], server: grpc.aio.Server) -> None:
    names = [*service_names, reflection.SERVICE_NAME]
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        MethodAwareReflectionServicer(names), server
    )
