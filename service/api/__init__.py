"""Transport: the gRPC servicers, interceptors, proto conversion and the status mapping."""
