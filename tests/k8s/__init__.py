"""Kubernetes tests: charts rendered by helm and validated against Kubernetes and CRD schemas."""
