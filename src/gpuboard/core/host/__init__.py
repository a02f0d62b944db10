"""The inference host: one long-lived process per worker that owns the worker's GPU work.

It loads the model once, takes the worker's GCL slot `gpu:<id>` for each request it
serves, and answers flow runs over a Unix socket; `gpuboard worker` starts and supervises
it. Flow-run processes send pixels and get text back: they never load a model.
"""
