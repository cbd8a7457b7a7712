"""Config center: save, read and delete config keys, and react when one changes.

    ETCDSYNC_ENDPOINTS=http://127.0.0.1:2379 python examples/config_center.py
"""

import threading

from etcdsync import ConfigStore, Connection

cfg = ConfigStore(Connection.from_env())
changed = threading.Event()


def on_change(event):
    print(f"changed: {event.type} {event.key} = {event.value!r}")
    if event.type == "delete":
        changed.set()


cfg.put("/config/example/db/url", "postgres://db:5432/app")
cfg.put("/config/example/retry/max", "5")
print("db/url:", cfg.get("/config/example/db/url"))
print("all:", cfg.get_prefix("/config/example/"))

watch = cfg.watch("/config/example/", on_change, prefix=True)
cfg.put("/config/example/retry/max", "7")           # -> on_change(put)
cfg.delete("/config/example/retry/max")             # -> on_change(delete)
changed.wait(5)
watch.cancel()
cfg.delete("/config/example/db/url")
print("after delete:", cfg.get("/config/example/db/url"))
