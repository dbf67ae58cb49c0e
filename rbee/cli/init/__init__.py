"""`rbee init`: a first cluster YAML, commented, from this machine, ~/.ssh/config and a model.

The command (`command`) gathers facts (`facts`: this machine's capabilities, the Host entries,
the model's sha256), asks on a terminal what the flags left open (`questions`), and hands the
answers (`answers`) to `cluster_yaml` (`template`): a pure function from answers to text, pinned
by snapshots. The text is validated before it is written.
"""

from __future__ import annotations

from rbee.cli.init.answers import InitAnswers, ModelFacts
from rbee.cli.init.command import init
from rbee.cli.init.facts import HUB_TIMEOUT_S, default_model_name, model_source
from rbee.cli.init.questions import DEFAULT_MODEL
from rbee.cli.init.template import cluster_yaml

__all__ = [
    "DEFAULT_MODEL",
    "HUB_TIMEOUT_S",
    "InitAnswers",
    "ModelFacts",
    "cluster_yaml",
    "default_model_name",
    "init",
    "model_source",
]
