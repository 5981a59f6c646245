"""warden's supervisor: sandboxes children and runs them under a profile."""
