"""Control plane: shard registry, routing, autoscaling policies (pure functions), breakers."""
