"""The pure core: the model, the planner, inventories, rendering, instance values, export.

No I/O and no asyncio here (checked by the import contracts in pyproject.toml): everything takes
values and returns values, so it is tested without etcd.
"""
