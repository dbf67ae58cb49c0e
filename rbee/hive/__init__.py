"""rbee-hive, the daemon on each machine.

A program: from here on Python's warnings go to its log (`rbee.pywarnings`), before its
modules import their dependencies.
"""

from rbee.pywarnings import log_python_warnings

log_python_warnings()
