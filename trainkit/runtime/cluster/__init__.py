"""Running on more than one machine: starting node services, the cluster's secret, and
finding a runtime to attach to (``init(address="auto")``)."""
