"""Data logic: the in-memory episode, tier schemas, sources, the LeRobot v3.0 store, builds."""
