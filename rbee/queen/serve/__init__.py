"""The queen's request path: worker records and their registry, routing policies, admission
(slots and queues), calls to workers (claim → call → retry → release), the relay (the OpenAI
hot path), jobs, the access log and the metrics.

No SQLite and no control plane here (an import-linter contract says so): what the path needs
from them comes in as callables and protocols, given by `rbee.queen.app`.
"""
