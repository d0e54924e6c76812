"""Code shared by edge and cloud: feature spec, audio I/O, errors. Imports nothing of edge/cloud."""
