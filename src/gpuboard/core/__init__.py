"""Core of gpuboard: models, sources, actions and the pipeline's parts. Never imports Textual."""
