"""The node service's parts that hold state on their own (see each module)."""
