"""A thumbnail service: untrusted images are decoded in sandboxed workers (see service.py)."""
