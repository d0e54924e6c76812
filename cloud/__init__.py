"""Cloud side: recogniser shards and (later) the coordinator."""
