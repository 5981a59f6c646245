"""Typed, validated channels between the supervisor and its children."""
