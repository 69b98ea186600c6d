"""Transport: the REST shim (grpc-gateway semantics), its routes, transcoding and OpenAPI."""
