"""The autoscaling simulator: arrival traces, baseline policies of other systems (Kubernetes HPA,
Knative KPA, Ray Serve), driven by explicit times so tests use a fake clock."""
