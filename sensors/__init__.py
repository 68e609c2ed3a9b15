"""Sensors: runs triggered by events rather than the clock."""

import warnings

import dagster as dg

# Dagster 1.13 hands `owners=None` to a beta parameter of `SensorDefinition` each time one is built, and
# `Definitions` rebuilds every sensor when it attaches resources, so a filter scoped to our decorator
# misses most of them. Nothing of ours uses owners: ignore that one message, nothing else. Here, in the
# package, so that it is in place before any sensor module builds its sensor.
warnings.filterwarnings(
    "ignore", category=dg.BetaWarning, message=r"Parameter `owners` of initializer `SensorDefinition"
)
