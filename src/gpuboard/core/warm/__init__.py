"""The warm executor: a gpuboard worker type whose flow runs run in long-lived runner
processes that already imported Prefect and the flow, one run at a time each."""
