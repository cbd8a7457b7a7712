"""The etcd adapter: `store` is the only module that imports etcd3aio and grpc; `lease` keeps keys
alive under a lease on top of it."""
