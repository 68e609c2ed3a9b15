"""Sensors: runs triggered by events rather than the clock."""
