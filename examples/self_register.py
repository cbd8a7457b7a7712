"""A service registering two instances (sharing one 10 s lease), then discovering them.

    ETCDSYNC_ENDPOINTS=http://127.0.0.1:2379 python examples/self_register.py
"""

from etcdsync import Connection, Registry

reg = Registry(Connection.from_env())              # prefix="/services/", format="json"
one = reg.register("my_service", "instance_1", host="localhost", port=3000, metadata={"zone": "a"}, ttl=10)
with reg.register("my_service", "instance_2", host="localhost", port=3001, ttl=10):
    for inst in reg.discover("my_service"):
        print(f"found {inst.id} at {inst.host}:{inst.port} metadata={inst.metadata}")
# leaving the with block deleted instance_2's key (the shared lease stays for instance_1): it is gone at once
print("after instance_2 left:", [i.id for i in reg.discover("my_service")])
one.deregister()
print("after deregister:", reg.discover("my_service"))
