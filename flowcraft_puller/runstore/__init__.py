"""Run stores: the per-run state machine the daemon drives, and its implementations."""
