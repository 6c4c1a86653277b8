"""The model server: loaders, manager, data plane, REST and gRPC adapters."""
