"""A local etcd: finding the binaries and running members (`etcdbin`), and `etcdsync dev` (`dev`).
Used by the dev command, the tests and the benchmarks; never by the library or the daemon."""
