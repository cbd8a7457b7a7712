"""A watcher printing the instance list of a service on every change (registrations, deregistrations,
lease expiry). Runs until Ctrl-C, or for --seconds.

    ETCDSYNC_ENDPOINTS=http://127.0.0.1:2379 python examples/watch_services.py my_service
"""

import argparse
import time

from etcdsync import Connection, Registry

parser = argparse.ArgumentParser()
parser.add_argument("service")
parser.add_argument("--seconds", type=float, default=None)
args = parser.parse_args()

reg = Registry(Connection.from_env())


def on_instances(instances):
    ids = ", ".join(f"{i.id}@{i.host}:{i.port}" for i in instances) or "(none)"
    print(f"{args.service}: {len(instances)} instances: {ids}", flush=True)


watch = reg.watch(args.service, on_instances)
try:
    time.sleep(args.seconds) if args.seconds else time.sleep(1e9)
except KeyboardInterrupt:
    pass
finally:
    watch.cancel()
