"""The cluster YAML: models, loading with line:col errors, and the JSON Schema."""

from __future__ import annotations

from rbee.config.load import load_cluster, load_cluster_text
from rbee.config.models import (
    Build,
    Cluster,
    Deployment,
    Hive,
    Model,
    Queen,
    Ssh,
    WorkerBinary,
    check_references,
)
from rbee.config.schema import cluster_schema, schema_text, write_schema

__all__ = [
    "Build",
    "Cluster",
    "Deployment",
    "Hive",
    "Model",
    "Queen",
    "Ssh",
    "WorkerBinary",
    "check_references",
    "cluster_schema",
    "load_cluster",
    "load_cluster_text",
    "schema_text",
    "write_schema",
]
