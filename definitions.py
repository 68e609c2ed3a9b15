"""The one `dg.Definitions` of the project, loaded by workspace.yaml and by `dagster ... -m definitions`."""

from jobs import make_definitions

defs = make_definitions()
